/*
 * fill: a workload whose own counts are the ground truth for kit's loss counters.
 * usage: fill THREADS CALLS STACK_PAIRS BUFFER_EVENTS
 * Prints "ready", waits for a line on stdin, then
 *   1. starts THREADS threads one after another, each making CALLS getppid syscalls
 *      (one hash-map key per thread: a map smaller than THREADS must fill);
 *   2. makes STACK_PAIRS pairs of getpgid syscalls from two call sites, a then b
 *      (two distinct user stacks: a one-bucket stack map keeps a's and refuses b's);
 *   3. makes BUFFER_EVENTS getsid syscalls (more than a one-page perf buffer holds),
 * prints "done", and waits for a line on stdin before exiting.
 * Built with frame pointers so the user stacks of a and b are walkable and differ.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

static long calls;

static void *worker(void *arg)
{
    (void)arg;
    for (long i = 0; i < calls; i++)
        syscall(SYS_getppid);
    return NULL;
}

__attribute__((noinline)) static void site_a(void) { syscall(SYS_getpgid, 0); __asm__ volatile(""); }
__attribute__((noinline)) static void site_b(void) { syscall(SYS_getpgid, 0); __asm__ volatile(""); }

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: fill THREADS CALLS STACK_PAIRS BUFFER_EVENTS\n");
        return 2;
    }
    long threads = atol(argv[1]), pairs = atol(argv[3]), events = atol(argv[4]);
    calls = atol(argv[2]);
    char line[16];
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        return 1;
    for (long t = 0; t < threads; t++) {
        pthread_t th;
        if (pthread_create(&th, NULL, worker, NULL) != 0 || pthread_join(th, NULL) != 0)
            return 1;
    }
    for (long i = 0; i < pairs; i++) {
        site_a();
        site_b();
    }
    for (long i = 0; i < events; i++)
        syscall(SYS_getsid, 0);
    printf("done\n");
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        return 1;
    return 0;
}
