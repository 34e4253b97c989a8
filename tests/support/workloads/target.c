/*
 * target: a process with a named function to put uprobes on; it counts its own calls.
 * usage: target CALLS [COMM]
 *   CALLS > 0: prints "ready", waits for a line on stdin, calls kit_target_fn() CALLS times,
 *              prints "done CALLS", waits for a line on stdin, exits.
 *   CALLS = 0: calls kit_target_fn() every millisecond until killed.
 * COMM (default "kit-target") is set with prctl(PR_SET_NAME): any bytes but NUL, at most 15.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <unistd.h>

volatile long sink;

__attribute__((noinline)) void kit_target_fn(long i) { sink += i; __asm__ volatile(""); }

int main(int argc, char **argv)
{
    long calls = argc > 1 ? atol(argv[1]) : 0;
    char line[16];
    prctl(PR_SET_NAME, argc > 2 ? argv[2] : "kit-target");
    if (calls == 0) {
        for (long n = 0;; n++) {
            kit_target_fn(n);
            usleep(1000);
        }
    }
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        return 1;
    for (long n = 0; n < calls; n++)
        kit_target_fn(n);
    printf("done %ld\n", calls);
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        return 1;
    return 0;
}
