/*
 * pingpong: two processes bounce a byte through a pair of pipes, pinned to one
 * CPU, so every round trip is two context switches (each side blocks once in
 * read). The busiest honest sched_switch load one core can make: the offcpu
 * benchmark's workload. Prints its own wall-clock time and the round trips.
 *
 *   pingpong ROUNDS [CPU]
 *
 * The binary's name is the processes' comm (kit-pingpong when built by the
 * bench), so probes can scope to it.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? atol(argv[1]) : 100000;
    int cpu = argc > 2 ? atoi(argv[2]) : 0;
    int a[2], b[2];
    char c = 'x';
    cpu_set_t set;

    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) || pipe(a) || pipe(b)) {
        perror("pingpong");
        return 1;
    }
    pid_t child = fork();
    if (child == 0) {
        close(a[1]);  /* so that the parent's exit is an EOF here, not a hang */
        close(b[0]);
        for (long i = 0; i < rounds; i++)
            if (read(a[0], &c, 1) != 1 || write(b[1], &c, 1) != 1)
                _exit(1);
        _exit(0);
    }
    close(a[0]);
    close(b[1]);
    double t = now();
    for (long i = 0; i < rounds; i++)
        if (write(a[1], &c, 1) != 1 || read(b[0], &c, 1) != 1)
            return 1;
    t = now() - t;
    int status = 0;
    waitpid(child, &status, 0);
    printf("{\"seconds\": %.6f, \"rounds\": %ld}\n", t, rounds);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
