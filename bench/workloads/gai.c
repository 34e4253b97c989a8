/*
 * gai: name lookups through libc's getaddrinfo, served from /etc/hosts
 * ("localhost"), so no network is involved. The getaddrinfo benchmark's
 * workload.
 *
 *   gai CALLS
 *
 * Resident, like lockloop: prints {"pid": P}, then for each line on stdin runs
 * one round of CALLS lookups ("go") and prints {"seconds", "cpu", "events"}, or
 * runs rounds until killed ("spin"). Exits at EOF.
 */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double clock_s(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 10000;
    char line[16];
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    printf("{\"pid\": %d}\n", (int)getpid());
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        int spin = strncmp(line, "spin", 4) == 0;
        do {
            long failed = 0;
            double t = clock_s(CLOCK_MONOTONIC), c = clock_s(CLOCK_PROCESS_CPUTIME_ID);
            for (long i = 0; i < n; i++) {
                struct addrinfo *res = NULL;
                if (getaddrinfo("localhost", NULL, &hints, &res) != 0)
                    failed++;
                else
                    freeaddrinfo(res);
            }
            t = clock_s(CLOCK_MONOTONIC) - t;
            c = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c;
            if (!spin) {
                printf("{\"seconds\": %.6f, \"cpu\": %.6f, \"events\": %ld, \"failed\": %ld}\n", t, c, n, failed);
                fflush(stdout);
            }
        } while (spin);
    }
    return 0;
}
