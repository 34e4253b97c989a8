/*
 * offcpu ground truth: threads that block in known ways and time themselves.
 *
 *   libc-sleep   usleep() through libc, called from sleep_via_libc()
 *   direct-sleep nanosleep by a raw `syscall` instruction inside sleep_by_syscall()
 *   lock-wait    pthread_mutex_lock() on a mutex lock-hold keeps, from wait_for_lock()
 *   pipe-read    read() on a pipe pipe-write fills late, from read_from_pipe()
 *
 * Each waiting thread adds up its own CLOCK_MONOTONIC time around the blocking
 * call; at exit the program prints one JSON object with every thread's tid
 * and totals in microseconds. Built by the tests with -fno-omit-frame-pointer.
 * With "wait" as argv[1] it first blocks on reading stdin until a byte arrives
 * (so a test can move it into a cgroup first).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int rounds = 20;
static long period_us = 20000;

#define EACH_MAX 64
struct result {
    const char *name;
    long tid;
    long long waited_us;
    int calls;
    long long each_us[EACH_MAX]; /* the first EACH_MAX calls, each timed: a test can tell which ran long */
};
static struct result results[6];

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static void took(struct result *r, long long t0)
{
    long long us = now_us() - t0;
    r->waited_us += us;
    if (r->calls < EACH_MAX)
        r->each_us[r->calls] = us;
    r->calls++;
}

static void begin(struct result *r, const char *name)
{
    r->name = name;
    r->tid = syscall(SYS_gettid);
    pthread_setname_np(pthread_self(), name);
}

__attribute__((noinline)) void sleep_via_libc(struct result *r)
{
    long long t0 = now_us();
    usleep(period_us);
    took(r, t0);
    __asm__ volatile("" ::: "memory"); /* keep this frame: no tail call */
}

__attribute__((noinline)) void sleep_by_syscall(struct result *r)
{
    struct timespec ts = {0, period_us * 1000};
    long long t0 = now_us();
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "0"((long)SYS_nanosleep), "D"(&ts), "S"(0L)
                     : "rcx", "r11", "memory");
    took(r, t0);
}

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_barrier_t lock_ready;

__attribute__((noinline)) void wait_for_lock(struct result *r)
{
    long long t0 = now_us();
    pthread_mutex_lock(&lock);
    took(r, t0);
    pthread_mutex_unlock(&lock);
}

static int pipefd[2];

__attribute__((noinline)) void read_from_pipe(struct result *r)
{
    char c;
    long long t0 = now_us();
    if (read(pipefd[0], &c, 1) != 1)
        exit(3);
    took(r, t0);
}

static void *libc_sleeper(void *arg)
{
    begin(arg, "libc-sleep");
    for (int i = 0; i < rounds; i++)
        sleep_via_libc(arg);
    return NULL;
}

static void *direct_sleeper(void *arg)
{
    begin(arg, "direct-sleep");
    for (int i = 0; i < rounds; i++)
        sleep_by_syscall(arg);
    return NULL;
}

static void *lock_holder(void *arg)
{
    begin(arg, "lock-hold");
    for (int i = 0; i < rounds; i++) {
        pthread_mutex_lock(&lock);
        pthread_barrier_wait(&lock_ready);
        struct timespec ts = {0, period_us * 1000};
        nanosleep(&ts, NULL);
        pthread_mutex_unlock(&lock);
        pthread_barrier_wait(&lock_ready);
    }
    return NULL;
}

static void *lock_waiter(void *arg)
{
    begin(arg, "lock-wait");
    for (int i = 0; i < rounds; i++) {
        pthread_barrier_wait(&lock_ready);  /* the holder has the lock now */
        wait_for_lock(arg);
        pthread_barrier_wait(&lock_ready);
    }
    return NULL;
}

static void *pipe_reader(void *arg)
{
    begin(arg, "pipe-read");
    for (int i = 0; i < rounds; i++)
        read_from_pipe(arg);
    return NULL;
}

static void *pipe_writer(void *arg)
{
    begin(arg, "pipe-write");
    for (int i = 0; i < rounds; i++) {
        struct timespec ts = {0, period_us * 1000};
        nanosleep(&ts, NULL);
        if (write(pipefd[1], "x", 1) != 1)
            exit(3);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "wait") == 0) {
        char c;
        if (read(0, &c, 1) != 1)
            return 2;
    }
    if (argc > 2)
        rounds = atoi(argv[2]);
    if (argc > 3)
        period_us = atol(argv[3]);
    if (pipe(pipefd) || pthread_barrier_init(&lock_ready, NULL, 2))
        return 2;
    void *(*fns[])(void *) = {libc_sleeper, direct_sleeper, lock_holder, lock_waiter, pipe_reader, pipe_writer};
    pthread_t th[6];
    for (int i = 0; i < 6; i++)
        pthread_create(&th[i], NULL, fns[i], &results[i]);
    for (int i = 0; i < 6; i++)
        pthread_join(th[i], NULL);
    printf("{\"pid\": %d, \"threads\": {", getpid());
    for (int i = 0; i < 6; i++) {
        printf("%s\"%s\": {\"tid\": %ld, \"waited_us\": %lld, \"calls\": %d, \"each_us\": [", i ? ", " : "",
               results[i].name, results[i].tid, results[i].waited_us, results[i].calls);
        for (int j = 0; j < results[i].calls && j < EACH_MAX; j++)
            printf("%s%lld", j ? ", " : "", results[i].each_us[j]);
        printf("]}");
    }
    printf("}}\n");
    return 0;
}
