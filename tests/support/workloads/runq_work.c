/*
 * runqlat ground truth: a thread that wakes on a fixed schedule and measures
 * its own lateness, on a CPU kept busy by CPU-bound threads.
 *
 *   hog-N     NHOGS threads pinned to CPU, spinning until the end
 *   ticker    a thread pinned to the same CPU (SCHED_OTHER, or SCHED_BATCH with
 *             "batch": a batch task does not preempt the running one when it
 *             wakes, so it waits for the CPU as long as the hog's slice) that sleeps
 *             to absolute deadlines PERIOD_US apart (clock_nanosleep
 *             TIMER_ABSTIME, timer slack 1 ns) and, once running again, takes
 *             its delay: now - the deadline. The delay is the timer's own
 *             latency plus the wait for the CPU that runqlat measures. A
 *             deadline missed by that much is skipped (so every tick sleeps
 *             and is woken, as timerfd counts overruns).
 *
 * Protocol (tests/support/harness.py Workload): prints "ready", runs for SECONDS on
 * "go", then prints one JSON line: the ticker's tid, its delays as a log2
 * histogram of microseconds ({slot: count}, kit_log2_slot's buckets) and
 * their median, and exits on the next line.
 *
 *   runq-work NHOGS CPU SECONDS [PERIOD_US [normal|batch]]
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 65
#define MAX_TICKS 100000

static volatile int stop;
static int cpu;
static double seconds;
static long period_us = 10000;
static int ticker_batch;
static long ticker_tid;
static long long delays[MAX_TICKS];
static int ticks;

static void pin(void)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set)) {
        perror("sched_setaffinity");
        exit(1);
    }
}

static int slot_of(long long v)
{
    int r = 0;
    while (v > 0) {
        v >>= 1;
        r++;
    }
    return r;
}

static void *hog(void *arg)
{
    char name[16];
    snprintf(name, sizeof(name), "hog-%ld", (long)arg);
    pthread_setname_np(pthread_self(), name);
    pin();
    volatile unsigned long x = 0;
    while (!stop)
        x++;
    return NULL;
}

static void *ticker(void *arg)
{
    pthread_setname_np(pthread_self(), "ticker");
    ticker_tid = syscall(SYS_gettid);
    pin();
    prctl(PR_SET_TIMERSLACK, 1UL);   /* wake at the deadline, not up to 50 us after it */
    if (ticker_batch) {
        struct sched_param sp = {0};
        if (sched_setscheduler(0, SCHED_BATCH, &sp)) {
            perror("sched_setscheduler");
            exit(1);
        }
    }
    struct timespec next, now;
    clock_gettime(CLOCK_MONOTONIC, &next);
    long long n = (long long)(seconds * 1e6 / period_us);
    for (long long i = 0; i < n && ticks < MAX_TICKS; i++) {
        next.tv_nsec += period_us * 1000;
        while (next.tv_nsec >= 1000000000) {
            next.tv_nsec -= 1000000000;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
        clock_gettime(CLOCK_MONOTONIC, &now);
        long long late = (now.tv_sec - next.tv_sec) * 1000000000LL + (now.tv_nsec - next.tv_nsec);
        delays[ticks++] = late < 0 ? 0 : late;
        /* deadlines missed while late are skipped, so that every tick sleeps (and is woken) */
        while (late >= period_us * 1000LL - 100000) {
            next.tv_nsec += period_us * 1000;
            while (next.tv_nsec >= 1000000000) {
                next.tv_nsec -= 1000000000;
                next.tv_sec++;
            }
            late -= period_us * 1000LL;
            i++;
        }
    }
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: runq-work NHOGS CPU SECONDS [PERIOD_US [normal|batch]]\n");
        return 2;
    }
    int nhogs = atoi(argv[1]);
    cpu = atoi(argv[2]);
    seconds = atof(argv[3]);
    if (argc > 4)
        period_us = atol(argv[4]);
    if (argc > 5)
        ticker_batch = argv[5][0] == 'b';
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    if (!fgets(line, sizeof(line), stdin))
        return 1;
    pthread_t hogs[64], tick;
    for (long i = 0; i < nhogs && i < 64; i++)
        pthread_create(&hogs[i], NULL, hog, (void *)i);
    pthread_create(&tick, NULL, ticker, NULL);
    pthread_join(tick, NULL);
    stop = 1;
    for (int i = 0; i < nhogs && i < 64; i++)
        pthread_join(hogs[i], NULL);
    long long hist[SLOTS] = {0};
    for (int i = 0; i < ticks; i++)
        hist[slot_of(delays[i] / 1000)]++;
    qsort(delays, ticks, sizeof(delays[0]), cmp);
    printf("{\"pid\": %d, \"tid\": %ld, \"ticks\": %d, \"median_us\": %.1f, \"hist\": {", getpid(), ticker_tid,
           ticks, ticks ? delays[ticks / 2] / 1000.0 : 0.0);
    int first = 1;
    for (int s = 0; s < SLOTS; s++) {
        if (hist[s]) {
            printf("%s\"%d\": %lld", first ? "" : ", ", s, hist[s]);
            first = 0;
        }
    }
    printf("}}\n");
    fgets(line, sizeof(line), stdin);
    return 0;
}
