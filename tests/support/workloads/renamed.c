/*
 * renamed: a process whose work runs in threads it renamed, as thread pools
 * do with pthread_setname_np; the ground truth for --comm and --thread-comm.
 *
 * Built as `ho-renamed` (its exec name, so its main thread's name). Two
 * worker threads rename themselves `rn-w0` and `rn-w1`, then each does, in
 * this order and counting each call itself:
 *   LOCKS    pool_lock()/pool_unlock() pairs (noinline, a mutex of its own, so
 *            never contended)
 *   LOOKUPS  getaddrinfo("localhost") (resolved from /etc/hosts)
 *   CALLS    getppid() syscalls (raw, so libc cannot cache them)
 *   SLEEPS   nanosleep()s of SLEEP_US microseconds, timed around each call
 * The main thread does none of that; it only waits for the workers.
 *
 * Usage: ho-renamed SLEEP_US LOCKS,LOOKUPS,CALLS,SLEEPS LOCKS,LOOKUPS,CALLS,SLEEPS
 * It prints {"pid", "main_tid", "threads": {"rn-w0": {"tid"}, ...}} once the
 * workers are renamed, waits for a line on stdin, works, prints the report
 * ({"pid", "threads": {"rn-w0": {"tid", "locks", "lookups", "lookups_failed",
 * "calls", "sleeps", "slept_us"}, ...}}) and exits when stdin closes.
 */
#define _GNU_SOURCE
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NWORKERS 2

struct pool {
    pthread_mutex_t mu;
};

struct worker {
    char name[16];
    long tid;
    long want_locks, want_lookups, want_calls, want_sleeps;
    long locks, lookups, lookups_failed, calls, sleeps;
    long long slept_us;
    struct pool pool;
};

static struct worker workers[NWORKERS];
static long sleep_us;
static pthread_barrier_t renamed, go;

__attribute__((noinline)) void pool_lock(struct pool *p)
{
    pthread_mutex_lock(&p->mu);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void pool_unlock(struct pool *p)
{
    pthread_mutex_unlock(&p->mu);
    __asm__ volatile("" ::: "memory");
}

static long long now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000LL + t.tv_nsec / 1000;
}

static void *work(void *arg)
{
    struct worker *w = arg;
    w->tid = syscall(SYS_gettid);
    pthread_setname_np(pthread_self(), w->name);
    pthread_barrier_wait(&renamed);
    pthread_barrier_wait(&go);
    for (long i = 0; i < w->want_locks; i++) {
        pool_lock(&w->pool);
        w->locks++;
        pool_unlock(&w->pool);
    }
    for (long i = 0; i < w->want_lookups; i++) {
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof(hints));
        hints.ai_family = AF_INET;
        hints.ai_socktype = SOCK_STREAM;
        if (getaddrinfo("localhost", NULL, &hints, &res) != 0)
            w->lookups_failed++;
        else
            freeaddrinfo(res);
        w->lookups++;
    }
    for (long i = 0; i < w->want_calls; i++) {
        syscall(SYS_getppid);
        w->calls++;
    }
    for (long i = 0; i < w->want_sleeps; i++) {
        struct timespec ts = {sleep_us / 1000000, (sleep_us % 1000000) * 1000};
        long long t0 = now_us();
        nanosleep(&ts, NULL);
        w->slept_us += now_us() - t0;
        w->sleeps++;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 2 + NWORKERS) {
        fprintf(stderr, "usage: %s SLEEP_US LOCKS,LOOKUPS,CALLS,SLEEPS LOCKS,LOOKUPS,CALLS,SLEEPS\n", argv[0]);
        return 2;
    }
    sleep_us = atol(argv[1]);
    pthread_barrier_init(&renamed, NULL, NWORKERS + 1);
    pthread_barrier_init(&go, NULL, NWORKERS + 1);
    pthread_t t[NWORKERS];
    for (int i = 0; i < NWORKERS; i++) {
        struct worker *w = &workers[i];
        snprintf(w->name, sizeof(w->name), "rn-w%d", i);
        if (sscanf(argv[2 + i], "%ld,%ld,%ld,%ld", &w->want_locks, &w->want_lookups, &w->want_calls,
                   &w->want_sleeps) != 4) {
            fprintf(stderr, "bad counts %s\n", argv[2 + i]);
            return 2;
        }
        pthread_mutex_init(&w->pool.mu, NULL);
        pthread_create(&t[i], NULL, work, w);
    }
    pthread_barrier_wait(&renamed);
    printf("{\"pid\": %d, \"main_tid\": %ld, \"threads\": {", getpid(), (long)syscall(SYS_gettid));
    for (int i = 0; i < NWORKERS; i++)
        printf("%s\"%s\": {\"tid\": %ld}", i ? ", " : "", workers[i].name, workers[i].tid);
    printf("}}\n");
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof(line), stdin))
        return 1;
    pthread_barrier_wait(&go);
    for (int i = 0; i < NWORKERS; i++)
        pthread_join(t[i], NULL);
    printf("{\"pid\": %d, \"threads\": {", getpid());
    for (int i = 0; i < NWORKERS; i++) {
        struct worker *w = &workers[i];
        printf("%s\"%s\": {\"tid\": %ld, \"locks\": %ld, \"lookups\": %ld, \"lookups_failed\": %ld, "
               "\"calls\": %ld, \"sleeps\": %ld, \"slept_us\": %lld}",
               i ? ", " : "", w->name, w->tid, w->locks, w->lookups, w->lookups_failed, w->calls, w->sleeps,
               w->slept_us);
    }
    printf("}}\n");
    fflush(stdout);
    while (fgets(line, sizeof(line), stdin))  /* stays alive (its names readable) until stdin closes */
        ;
    return 0;
}
