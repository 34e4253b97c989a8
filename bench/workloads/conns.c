/*
 * conns: short TCP connections over loopback to a server thread of its own,
 * in the network namespace it runs in: the tcplife benchmark's workload.
 * Each connection: connect, 64 bytes up, 64 bytes down, the server closes
 * (FIN), the client reads to EOF and aborts (SO_LINGER 0: a reset, so that
 * neither side is left in TIME_WAIT and thousands of rounds never run out
 * of ports).
 *
 *   conns CALLS PORT
 *
 * Resident, like gai: prints {"pid": P}, then for each line on stdin runs one
 * round of CALLS connections ("go") and prints {"seconds", "cpu", "events"}
 * (events: connections completed), or runs until killed ("spin"). Exits at EOF.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int lsock;

static double clock_s(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void *serve(void *arg)
{
    char buf[64];
    (void)arg;
    for (;;) {
        int c = accept(lsock, NULL, NULL);
        if (c < 0)
            continue;
        size_t got = 0;
        while (got < sizeof buf) {
            ssize_t r = read(c, buf + got, sizeof buf - got);
            if (r <= 0)
                break;
            got += r;
        }
        if (got == sizeof buf)
            write(c, buf, sizeof buf);
        close(c);
    }
    return NULL;
}

static int one(const struct sockaddr_in *to)
{
    char buf[64] = "kit-bench";
    int s = socket(AF_INET, SOCK_STREAM, 0), ok = 0;
    if (s < 0)
        return 0;
    if (connect(s, (const struct sockaddr *)to, sizeof *to) == 0 && write(s, buf, sizeof buf) == sizeof buf) {
        size_t got = 0;
        ssize_t r;
        while ((r = read(s, buf, sizeof buf)) > 0)
            got += r;
        ok = got == sizeof buf && r == 0;
    }
    struct linger l = {.l_onoff = 1, .l_linger = 0};
    setsockopt(s, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(s);
    return ok;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000;
    int port = argc > 2 ? atoi(argv[2]) : 7072, one_ = 1;
    char line[16];
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    lsock = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(lsock, SOL_SOCKET, SO_REUSEADDR, &one_, sizeof one_);
    if (bind(lsock, (struct sockaddr *)&to, sizeof to) != 0 || listen(lsock, 128) != 0) {
        perror("listen");
        return 1;
    }
    pthread_t th;
    pthread_create(&th, NULL, serve, NULL);
    printf("{\"pid\": %d}\n", (int)getpid());
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        int spin = strncmp(line, "spin", 4) == 0;
        do {
            long done = 0;
            double t = clock_s(CLOCK_MONOTONIC), c = clock_s(CLOCK_PROCESS_CPUTIME_ID);
            for (long i = 0; i < n; i++)
                done += one(&to);
            t = clock_s(CLOCK_MONOTONIC) - t;
            c = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c;
            if (!spin) {
                printf("{\"seconds\": %.6f, \"cpu\": %.6f, \"events\": %ld}\n", t, c, done);
                fflush(stdout);
            }
        } while (spin);
    }
    return 0;
}
