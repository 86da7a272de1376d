/* tcp-rtt: the plain TCP round trip between two hosts, the floor for a small
 * message across nodes (what a small all-reduce is compared with).
 *
 *   tcp-rtt -l PORT                 serve: echo every 8-byte message back
 *   tcp-rtt HOST PORT [-n COUNT]    ping: median round trip of COUNT messages
 *
 * TCP_NODELAY on both sides, blocking sockets, 8-byte messages. */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return 1e6 * (double)ts.tv_sec + 1e-3 * (double)ts.tv_nsec;
}

static int full(int fd, char *b, size_t n, int rd) {
    while (n) {
        const ssize_t k = rd ? read(fd, b, n) : write(fd, b, n);
        if (k <= 0) return -1;
        b += k;
        n -= (size_t)k;
    }
    return 0;
}

static int cmp(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const int one = 1;
    char msg[8] = "ping!!!";
    if (argc == 3 && !strcmp(argv[1], "-l")) {
        const int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 1)) return perror("tcp-rtt: bind/listen"), 1;
        const int c = accept(s, NULL, NULL);
        if (c < 0) return perror("tcp-rtt: accept"), 1;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        while (!full(c, msg, sizeof msg, 1) && !full(c, msg, sizeof msg, 0)) {
        }
        return 0;
    }
    if (argc < 3) {
        fprintf(stderr, "usage: tcp-rtt -l PORT | tcp-rtt HOST PORT [-n COUNT]\n");
        return 2;
    }
    const int n = argc == 5 && !strcmp(argv[3], "-n") ? atoi(argv[4]) : 2000;
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai;
    if (getaddrinfo(argv[1], argv[2], &hints, &ai)) return fprintf(stderr, "tcp-rtt: cannot resolve %s\n", argv[1]), 1;
    int fd = -1;
    for (int tries = 0; tries < 50; tries++) { /* the server may still be starting */
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (!connect(fd, ai->ai_addr, ai->ai_addrlen)) break;
        close(fd);
        fd = -1;
        usleep(100000);
    }
    if (fd < 0) return perror("tcp-rtt: connect"), 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    double *t = malloc((size_t)n * sizeof *t);
    for (int i = -100; i < n; i++) {
        const double t0 = now_us();
        if (full(fd, msg, sizeof msg, 0) || full(fd, msg, sizeof msg, 1)) return fprintf(stderr, "tcp-rtt: connection lost\n"), 1;
        if (i >= 0) t[i] = now_us() - t0;
    }
    qsort(t, (size_t)n, sizeof *t, cmp);
    printf("tcp-rtt: %s: median round trip %.1f us (min %.1f, 90th percentile %.1f) over %d messages of 8 bytes\n",
           argv[1], t[n / 2], t[0], t[n * 9 / 10], n);
    close(fd);
    return 0;
}
