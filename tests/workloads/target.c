/*
 * target: a process with a named function to put uprobes on.
 * usage: target [SECONDS]   calls kit_target_fn() every millisecond, for SECONDS (default: until killed),
 * then prints how many calls it made. Its comm is "kit-target".
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

volatile long sink;

__attribute__((noinline)) void kit_target_fn(long i) { sink += i; }

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 0;
    struct timespec t0, now;
    long n = 0;
    prctl(PR_SET_NAME, "kit-target");
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        kit_target_fn(n++);
        usleep(1000);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (seconds > 0 && (now.tv_sec - t0.tv_sec) + (now.tv_nsec - t0.tv_nsec) / 1e9 >= seconds)
            break;
    }
    printf("%ld\n", n);
    return 0;
}
