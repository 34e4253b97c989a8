/*
 * lockwork: a test workload for kit's lockhold and getaddrinfo recipes that
 * keeps its own books.
 *
 * Threads take a pool lock through noinline pool_lock()/pool_unlock() (a
 * pthread mutex inside) and hold it for a known time: fast holds, slow holds
 * (nanosleep inside the lock), and holds with name lookups inside. Every hold
 * and wait is timed by the workload itself, just inside kit's probe points
 * (after pool_lock returns, before pool_unlock is called), and every lookup is
 * counted per name, so the test has ground truth kit did not produce.
 *
 * Usage: lockwork [--gate] [--hold-gate] [--nested=N] THREADS FAST SLOW SLOW_MS [NAME:COUNT[:ghbn|:fail]...]
 *   --gate       wait for a line on stdin before starting the work (so a
 *                process can exist before kit attaches, and work after)
 *   --hold-gate  after the report, wait for stdin to close before exiting
 *   --nested=N   then, in the main thread, take N different pool locks one
 *                inside the other and release them in reverse order
 * The report is one JSON object on stdout.
 */
#define _GNU_SOURCE
#include <netdb.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_NAMES 8
#define SLOTS 65

struct pool {
    pthread_mutex_t mu;
};

static struct pool the_pool = {PTHREAD_MUTEX_INITIALIZER};

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

struct name_job {
    char name[256];
    long count;
    int kind;        /* 0 getaddrinfo, 1 gethostbyname, 2 getaddrinfo that must fail */
    long done, failed;
};

static int nthreads, slow_ms;
static long nfast, nslow;
static struct name_job jobs[MAX_NAMES];
static int njobs;
static int go_pipe[2], done_pipe[2];

/* shared books, updated under the pool lock itself */
static long holds, waits, hold_slot[SLOTS];
/* holds by (slot of the time inside the probe points, slot of the span outside them: pool_lock
 * called to pool_unlock returned), between which a probe's measure of the hold must lie; added
 * after the unlock, so atomically */
static long hold_pair[SLOTS][SLOTS];
static uint64_t hold_total_ns, hold_max_ns, wait_total_ns, wait_max_ns;

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

static void lookup(struct name_job *j)
{
    if (j->kind == 1) {
        struct hostent *h = gethostbyname(j->name);
        if (!h)
            __atomic_fetch_add(&j->failed, 1, __ATOMIC_RELAXED);
    } else {
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof(hints));
        hints.ai_family = AF_INET;
        hints.ai_socktype = SOCK_STREAM;
        if (j->kind == 2)
            hints.ai_flags = AI_NUMERICHOST;  /* fails at once: no network, no files */
        int rc = getaddrinfo(j->name, NULL, &hints, &res);
        if (rc != 0)
            __atomic_fetch_add(&j->failed, 1, __ATOMIC_RELAXED);
        else
            freeaddrinfo(res);
    }
    __atomic_fetch_add(&j->done, 1, __ATOMIC_RELAXED);
}

/* One hold: time the wait and the hold from just outside/inside the probe points. */
static void hold(int what, struct name_job *j)
{
    uint64_t t0 = now_ns();
    pool_lock(&the_pool);
    uint64_t t1 = now_ns();
    if (what == 1) {
        struct timespec ts = {slow_ms / 1000, (long)(slow_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    } else if (what == 2) {
        lookup(j);
    }
    uint64_t t2 = now_ns();
    uint64_t w = t1 - t0, h = t2 - t1;
    holds++;
    waits++;
    hold_slot[slot(h / 1000)]++;
    hold_total_ns += h;
    wait_total_ns += w;
    if (h > hold_max_ns)
        hold_max_ns = h;
    if (w > wait_max_ns)
        wait_max_ns = w;
    pool_unlock(&the_pool);
    __atomic_fetch_add(&hold_pair[slot(h / 1000)][slot((now_ns() - t0) / 1000)], 1, __ATOMIC_RELAXED);
}

/* Named call paths, so a holder stack says which kind of hold it was. */
__attribute__((noinline)) void fast_path(void) { hold(0, NULL); __asm__ volatile("" ::: "memory"); }
__attribute__((noinline)) void slow_path(void) { hold(1, NULL); __asm__ volatile("" ::: "memory"); }
__attribute__((noinline)) void lookup_path(struct name_job *j) { hold(2, j); __asm__ volatile("" ::: "memory"); }

static void *worker(void *arg)
{
    long idx = (long)arg;
    char c;
    if (read(go_pipe[0], &c, 1) != 1)
        return NULL;
    for (long i = idx; i < nfast; i += nthreads)
        fast_path();
    for (long i = idx; i < nslow; i += nthreads)
        slow_path();
    for (int k = 0; k < njobs; k++)
        for (long i = idx; i < jobs[k].count; i += nthreads)
            lookup_path(&jobs[k]);
    if (write(done_pipe[1], "d", 1) != 1)
        return NULL;
    return NULL;
}

int main(int argc, char **argv)
{
    int gate = 0, hold_gate = 0, a = 1;
    long nested = 0;
    for (; a < argc && argv[a][0] == '-'; a++) {
        if (!strcmp(argv[a], "--gate"))
            gate = 1;
        else if (!strcmp(argv[a], "--hold-gate"))
            hold_gate = 1;
        else if (!strncmp(argv[a], "--nested=", 9))
            nested = atol(argv[a] + 9);
    }
    if (argc - a < 4) {
        fprintf(stderr, "usage: lockwork [--gate] [--hold-gate] THREADS FAST SLOW SLOW_MS [NAME:COUNT[:ghbn|:fail]...]\n");
        return 2;
    }
    nthreads = atoi(argv[a]);
    nfast = atol(argv[a + 1]);
    nslow = atol(argv[a + 2]);
    slow_ms = atoi(argv[a + 3]);
    for (int i = a + 4; i < argc && njobs < MAX_NAMES; i++) {
        char *spec = strdup(argv[i]);
        char *name = strtok(spec, ":"), *count = strtok(NULL, ":"), *kind = strtok(NULL, ":");
        struct name_job *j = &jobs[njobs++];
        snprintf(j->name, sizeof(j->name), "%s", name);
        j->count = count ? atol(count) : 1;
        j->kind = kind && !strcmp(kind, "ghbn") ? 1 : kind && !strcmp(kind, "fail") ? 2 : 0;
        free(spec);
    }
    if (pipe(go_pipe) || pipe(done_pipe))
        return 1;
    pthread_t th[64];
    if (nthreads < 1 || nthreads > 64)
        return 2;
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
    if (nested > 0) {
        struct pool *pools = calloc(nested, sizeof(*pools));
        for (long i = 0; i < nested; i++)
            pthread_mutex_init(&pools[i].mu, NULL);
        for (long i = 0; i < nested; i++)
            pool_lock(&pools[i]);
        for (long i = nested - 1; i >= 0; i--)
            pool_unlock(&pools[i]);
    }
    /* the report: the workload's own books */
    printf("{\"nested\": %ld, \"holds\": %ld, \"waits\": %ld, \"hold_total_us\": %.3f, \"hold_max_us\": %.3f,"
           " \"wait_total_us\": %.3f, \"wait_max_us\": %.3f, \"hold_slots\": {",
           nested, holds, waits, hold_total_ns / 1000.0, hold_max_ns / 1000.0, wait_total_ns / 1000.0, wait_max_ns / 1000.0);
    int first = 1;
    for (int i = 0; i < SLOTS; i++)
        if (hold_slot[i]) {
            printf("%s\"%d\": %ld", first ? "" : ", ", i, hold_slot[i]);
            first = 0;
        }
    printf("}, \"hold_pairs\": [");
    first = 1;
    for (int i = 0; i < SLOTS; i++)
        for (int k = 0; k < SLOTS; k++)
            if (hold_pair[i][k]) {
                printf("%s[%d, %d, %ld]", first ? "" : ", ", i, k, hold_pair[i][k]);
                first = 0;
            }
    printf("], \"lookups\": [");
    for (int k = 0; k < njobs; k++)
        printf("%s{\"name\": \"%s\", \"function\": \"%s\", \"count\": %ld, \"failed\": %ld}", k ? ", " : "",
               jobs[k].name, jobs[k].kind == 1 ? "gethostbyname" : "getaddrinfo", jobs[k].done, jobs[k].failed);
    printf("]}\n");
    fflush(stdout);
    if (hold_gate) {
        char buf[16];
        while (read(0, buf, sizeof(buf)) > 0)
            ;
    }
    return 0;
}
