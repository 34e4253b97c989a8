/*
 * execloop: starts /bin/true (with two arguments) N times, one after the
 * other, and waits for each: an exec and an exit per process. The execsnoop
 * benchmark's workload.
 *
 *   execloop N
 *
 * Resident, so a probe can scope to its pid (execsnoop matches the parent)
 * and time several rounds: prints {"pid": P}, then for each line on stdin
 * runs one round ("go") and prints {"seconds", "cpu", "events"}: its own wall
 * clock, the CPU time it and its children used, and 2 events per process
 * started (its exec and its exit, the two tracepoints that fire), or runs
 * rounds until killed ("spin"). Exits at EOF.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double clock_s(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double cpu_s(void)
{
    struct rusage self, kids;
    getrusage(RUSAGE_SELF, &self);
    getrusage(RUSAGE_CHILDREN, &kids);
    return self.ru_utime.tv_sec + self.ru_utime.tv_usec / 1e6 + self.ru_stime.tv_sec + self.ru_stime.tv_usec / 1e6
         + kids.ru_utime.tv_sec + kids.ru_utime.tv_usec / 1e6 + kids.ru_stime.tv_sec + kids.ru_stime.tv_usec / 1e6;
}

static int one(void)
{
    char *argv[] = {"/bin/true", "kit-bench", "an-argument", NULL};
    pid_t pid = fork();
    if (pid == 0) {
        execv(argv[0], argv);
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return -1;
    return 0;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000;
    char line[16];
    printf("{\"pid\": %d}\n", (int)getpid());
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        int spin = strncmp(line, "spin", 4) == 0;
        do {
            double t = clock_s(CLOCK_MONOTONIC), c = cpu_s();
            long ok = 0;
            for (long i = 0; i < n; i++)
                ok += one() == 0;
            t = clock_s(CLOCK_MONOTONIC) - t;
            c = cpu_s() - c;
            if (!spin) {
                printf("{\"seconds\": %.6f, \"cpu\": %.6f, \"events\": %ld}\n", t, c, 2 * ok);
                fflush(stdout);
            }
        } while (spin);
    }
    return 0;
}
