/*
 * wrapwork: a test workload for kit's lockhold whose lock wrappers take no
 * argument, the shape of `void pool_lock(void) { pthread_mutex_lock(&pool); }`,
 * and which keeps its own books.
 *
 * pool_lock()/pool_unlock() are noinline and keep the frame pointer. They
 * take the lock of the calling thread's current level: level 0 (lock A) at
 * first, level 1 (lock B) when called again inside a hold, so a thread can
 * take A then B and release B then A through the same two functions.
 *
 * Their first-argument register holds whatever the caller left there. Real
 * callers leave values that agree between a lock and its unlock now and then
 * (the run: 1 of 300); here the caller sets them on purpose, so the
 * test does not depend on the compiler: in flat holds every odd-numbered
 * unlock leaves the same value as its lock and every even one (the slow holds
 * among them) a different one; nested rounds are described at nested_hold().
 *
 * Every hold and wait is timed by the workload itself, just inside kit's
 * probe points (after pool_lock returns, before pool_unlock is called), so the
 * test has ground truth kit did not produce.
 *
 * Usage: wrapwork [--gate] [--hold-gate] flat THREADS HOLDS SLOW SLOW_MS
 *          HOLDS holds over THREADS threads, SLOW of them with SLOW_MS of sleep inside
 *        wrapwork [--gate] [--hold-gate] nested THREADS ROUNDS PRE_MS INNER_MS POST_MS
 *          per thread ROUNDS times: take A, sleep PRE_MS, take B, sleep INNER_MS,
 *          release B, sleep POST_MS, release A
 *   --gate       wait for a line on stdin before starting the work
 *   --hold-gate  after the report, wait for stdin to close before exiting
 * The report is one JSON object on stdout, after a first {"pid", "ready"} line.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 65
#define LEVELS 2

static pthread_mutex_t levels[LEVELS] = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER};
static __thread int depth;

/* The same functions, called with a chosen value left in the first-argument register (the
 * x86-64 ABI passes it in %rdi; a function without parameters never reads it). Through
 * pointers the compiler cannot see past, so the calls stay plain calls. */
typedef void (*leave_fn)(unsigned long);
static leave_fn volatile lock_leaving, unlock_leaving;
#define LOCK_LEAVING(v) lock_leaving(v)
#define UNLOCK_LEAVING(v) unlock_leaving(v)

__attribute__((noinline)) void pool_lock(void)
{
    pthread_mutex_lock(&levels[depth]);
    depth++;
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void pool_unlock(void)
{
    depth--;
    pthread_mutex_unlock(&levels[depth]);
    __asm__ volatile("" ::: "memory");
}

/* books per level (0 outer/flat, 1 inner), under their own mutex: never a probed function */
static pthread_mutex_t books_mu = PTHREAD_MUTEX_INITIALIZER;
static long holds[LEVELS], waits, hold_slot[LEVELS][SLOTS];
static uint64_t hold_total_ns, hold_max_ns, wait_total_ns;
/* per hold (the first RANGES): the slot of its time inside the probe points and of its span outside
 * them (lock called to unlock returned), between which kit's measure of it must lie */
#define RANGES 256
static int hold_range[RANGES][2];
static long nranges;

static int nthreads, nested;
static long nholds, nslow, slow_ms, pre_ms, inner_ms, post_ms, rounds;
static int go_pipe[2], done_pipe[2];

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec;
}

static int slot(uint64_t v)
{
    int r = 0;
    while (v) {
        r++;
        v >>= 1;
    }
    return r;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void book(int level, uint64_t wait_ns, uint64_t hold_ns, uint64_t span_ns)
{
    pthread_mutex_lock(&books_mu);
    if (nranges < RANGES) {
        hold_range[nranges][0] = slot(hold_ns / 1000);
        hold_range[nranges][1] = slot(span_ns / 1000);
        nranges++;
    }
    holds[level]++;
    waits++;
    hold_slot[level][slot(hold_ns / 1000)]++;
    hold_total_ns += hold_ns;
    wait_total_ns += wait_ns;
    if (hold_ns > hold_max_ns)
        hold_max_ns = hold_ns;
    pthread_mutex_unlock(&books_mu);
}

/* Flat hold number i, timed from just outside/inside the probe points. */
static void flat_hold(long i, int slow)
{
    unsigned long v = 0x10000 + 2 * i;
    uint64_t t0 = now_ns();
    LOCK_LEAVING(v);
    uint64_t t1 = now_ns();
    if (slow)
        sleep_ms(slow_ms);
    uint64_t t2 = now_ns();
    UNLOCK_LEAVING(i % 2 ? v : v + 1);
    uint64_t t3 = now_ns();
    book(0, t1 - t0, t2 - t1, t3 - t0);
}

/* A then B, released B then A. Values left for lock A, lock B, unlock B, unlock A, by round
 * r % 3: 0: a, b, b, a (each unlock agrees with the newest hold); 1: a, b, c, d (none agrees);
 * 2: a, a, a, a (both holds were taken with the same value). */
static void nested_hold(long thread, long r)
{
    unsigned long a = (thread + 1) << 20 | r << 4, b = a + 1, c = a + 2, d = a + 3;
    int k = r % 3;
    uint64_t t0 = now_ns();
    LOCK_LEAVING(a);
    uint64_t t1 = now_ns();
    sleep_ms(pre_ms);
    uint64_t u0 = now_ns();
    LOCK_LEAVING(k == 2 ? a : b);
    uint64_t u1 = now_ns();
    sleep_ms(inner_ms);
    uint64_t u2 = now_ns();
    UNLOCK_LEAVING(k == 0 ? b : k == 1 ? c : a);
    uint64_t u3 = now_ns();
    sleep_ms(post_ms);
    uint64_t t2 = now_ns();
    UNLOCK_LEAVING(k == 1 ? d : a);
    uint64_t t3 = now_ns();
    book(1, u1 - u0, u2 - u1, u3 - u0);
    book(0, t1 - t0, t2 - t1, t3 - t0);
}

static void *worker(void *arg)
{
    long idx = (long)arg;
    char c;
    if (read(go_pipe[0], &c, 1) != 1)
        return NULL;
    if (nested) {
        for (long r = 0; r < rounds; r++)
            nested_hold(idx, r);
    } else {
        /* the slow holds spread over the threads, among the fast ones, at even numbers */
        long every = nslow ? 2 * (nholds / (2 * nslow)) : 1;
        for (long i = idx; i < nholds; i += nthreads)
            flat_hold(i, nslow && every && i % every == 0 && i / every < nslow);
    }
    if (write(done_pipe[1], "d", 1) != 1)
        return NULL;
    return NULL;
}

static void print_slots(const char *name, long *slots, int first)
{
    printf("%s\"%s\": {", first ? "" : ", ", name);
    int any = 0;
    for (int i = 0; i < SLOTS; i++)
        if (slots[i]) {
            printf("%s\"%d\": %ld", any ? ", " : "", i, slots[i]);
            any = 1;
        }
    printf("}");
}

int main(int argc, char **argv)
{
    int gate = 0, hold_gate = 0, a = 1;
    for (; a < argc && argv[a][0] == '-'; a++) {
        if (!strcmp(argv[a], "--gate"))
            gate = 1;
        else if (!strcmp(argv[a], "--hold-gate"))
            hold_gate = 1;
    }
    if (argc - a < 5 || (strcmp(argv[a], "flat") && (argc - a < 6 || strcmp(argv[a], "nested")))) {
        fprintf(stderr, "usage: wrapwork [--gate] [--hold-gate] flat THREADS HOLDS SLOW SLOW_MS\n"
                        "       wrapwork [--gate] [--hold-gate] nested THREADS ROUNDS PRE_MS INNER_MS POST_MS\n");
        return 2;
    }
    lock_leaving = (leave_fn)(void *)pool_lock;
    unlock_leaving = (leave_fn)(void *)pool_unlock;
    nested = !strcmp(argv[a], "nested");
    nthreads = atoi(argv[a + 1]);
    if (nested) {
        rounds = atol(argv[a + 2]);
        pre_ms = atol(argv[a + 3]);
        inner_ms = atol(argv[a + 4]);
        post_ms = atol(argv[a + 5]);
    } else {
        nholds = atol(argv[a + 2]);
        nslow = atol(argv[a + 3]);
        slow_ms = atol(argv[a + 4]);
        if (nslow > nholds)
            return 2;
    }
    if (nthreads < 1 || nthreads > 64 || pipe(go_pipe) || pipe(done_pipe))
        return 2;
    pthread_t th[64];
    for (long i = 0; i < nthreads; i++)
        pthread_create(&th[i], NULL, worker, (void *)i);
    printf("{\"pid\": %d, \"ready\": true}\n", getpid());
    fflush(stdout);
    if (gate) {
        char line[16];
        if (!fgets(line, sizeof(line), stdin))
            return 1;
    }
    for (int i = 0; i < nthreads; i++)
        if (write(go_pipe[1], "g", 1) != 1)
            return 1;
    for (int i = 0; i < nthreads; i++) {
        char c;
        if (read(done_pipe[0], &c, 1) != 1)
            return 1;
    }
    /* the report: the workload's own books; hold_slots counts both levels */
    long all[SLOTS];
    for (int i = 0; i < SLOTS; i++)
        all[i] = hold_slot[0][i] + hold_slot[1][i];
    printf("{\"holds\": %ld, \"outer_holds\": %ld, \"inner_holds\": %ld, \"waits\": %ld, \"hold_total_us\": %.3f,"
           " \"hold_max_us\": %.3f, \"wait_total_us\": %.3f, ",
           holds[0] + holds[1], holds[0], holds[1], waits, hold_total_ns / 1000.0, hold_max_ns / 1000.0,
           wait_total_ns / 1000.0);
    print_slots("hold_slots", all, 1);
    print_slots("outer_slots", hold_slot[0], 0);
    print_slots("inner_slots", hold_slot[1], 0);
    printf(", \"hold_ranges\": [");
    for (long i = 0; i < nranges; i++)
        printf("%s[%d, %d]", i ? ", " : "", hold_range[i][0], hold_range[i][1]);
    printf("]");
    printf("}\n");
    fflush(stdout);
    if (hold_gate) {
        char buf[16];
        while (read(0, buf, sizeof(buf)) > 0)
            ;
    }
    return 0;
}
