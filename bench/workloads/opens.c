/*
 * opens: a loop of open()s (glibc's open is the openat syscall), half of a
 * file that is there (opened and closed), half of one that is not (ENOENT):
 * the opensnoop benchmark's workload.
 *
 *   opens CALLS DIR     (DIR holds a file named `present`, and no `missing`)
 *
 * Resident, like gai: prints {"pid": P}, then for each line on stdin runs one
 * round of CALLS opens ("go") and prints {"seconds", "cpu", "events"}, or runs
 * rounds until killed ("spin"). Exits at EOF.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    const char *dir = argc > 2 ? argv[2] : ".";
    char present[4096], missing[4096], line[16];
    snprintf(present, sizeof present, "%s/present", dir);
    snprintf(missing, sizeof missing, "%s/missing", dir);
    printf("{\"pid\": %d}\n", (int)getpid());
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        int spin = strncmp(line, "spin", 4) == 0;
        do {
            long opened = 0, enoent = 0;
            double t = clock_s(CLOCK_MONOTONIC), c = clock_s(CLOCK_PROCESS_CPUTIME_ID);
            for (long i = 0; i < n; i++) {
                int fd = open(i & 1 ? missing : present, O_RDONLY);
                if (fd >= 0) {
                    opened++;
                    close(fd);
                } else if (errno == ENOENT) {
                    enoent++;
                }
            }
            t = clock_s(CLOCK_MONOTONIC) - t;
            c = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c;
            if (!spin) {
                printf("{\"seconds\": %.6f, \"cpu\": %.6f, \"events\": %ld, \"opened\": %ld, \"enoent\": %ld}\n",
                       t, c, n, opened, enoent);
                fflush(stdout);
            }
        } while (spin);
    }
    return 0;
}
