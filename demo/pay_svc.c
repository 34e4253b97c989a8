/*
 * pay-svc: a fake payment service for kit's demo. It is slow, and it is not
 * busy: its worker threads spend their time waiting. `kit triage --comm
 * pay-svc` (or `kit run offcpu --comm pay-svc`) shows where:
 *
 *   pool_lock      the connection pool's lock, taken through wrappers that take
 *                  no argument, pool_lock()/pool_unlock() (contended: futex).
 *                  On a cache miss (every POOL_REFRESH-th checkout) the holder
 *                  resolves the database's host name with getaddrinfo() and
 *                  "reconnects" (a 30 ms sleep) before it lets go.
 *   query_db       a slow "database" on a Unix socket that answers in 4 ms
 *                  (socket read)
 *   ledger_append  a global ledger lock (a pthread mutex taken directly) held
 *                  while the ledger is "written" (contended: futex)
 *   rate_limit     a fixed usleep() between requests (nanosleep through libc)
 *
 * The host name is PAY_DB_HOST from the environment, default "localhost" (in
 * /etc/hosts on every box: the demo resolves nothing over the network).
 *
 * It keeps its own books (pool holds, cache misses, lookups and their
 * failures, ledger holds, requests) for tests to compare with kit's numbers.
 * With --control it reads lines on stdin instead of sleeping: "pause" parks
 * every worker between two requests (holding no lock) and then prints the
 * books so far as one JSON line; "resume" lets them go on; end of input stops
 * it. Without --control it runs until killed, or for argv[1] seconds, and
 * prints the request count at the end.
 *
 * Built by demo/run_demo.py with -fno-omit-frame-pointer.
 */
#define _GNU_SOURCE
#include <netdb.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define WORKERS 4
#define POOL_REFRESH 10  /* a checkout in this many finds the cached address stale */

static pthread_mutex_t ledger = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t pool = PTHREAD_MUTEX_INITIALIZER;
static const char *db_host = "localhost";
static unsigned long checkouts;  /* under the pool lock */

/* the books: updated atomically, never under a probed lock */
static unsigned long requests, pool_holds, pool_misses, lookups, lookup_failures, ledger_holds;

/* --control: workers park between requests while paused */
static int paused, parked;
static sem_t resume_sem;

#define BOOK(x) __atomic_add_fetch(&(x), 1, __ATOMIC_RELAXED)

static void busy_us(long us)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do
        clock_gettime(CLOCK_MONOTONIC, &t);
    while ((t.tv_sec - t0.tv_sec) * 1000000L + (t.tv_nsec - t0.tv_nsec) / 1000 < us);
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* The pool's lock, as many services wrap it: no argument, one global pool. */
__attribute__((noinline)) void pool_lock(void)
{
    pthread_mutex_lock(&pool);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void pool_unlock(void)
{
    pthread_mutex_unlock(&pool);
    __asm__ volatile("" ::: "memory");
}

/* A cache miss: look the database up again and reconnect, with the pool locked. */
__attribute__((noinline)) void refresh_conn(void)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    BOOK(lookups);
    if (getaddrinfo(db_host, "5432", &hints, &res) != 0)
        BOOK(lookup_failures);
    else
        freeaddrinfo(res);
    sleep_us(40000);  /* the "reconnect" */
}

__attribute__((noinline)) void checkout_conn(void)
{
    pool_lock();
    BOOK(pool_holds);
    if (++checkouts % POOL_REFRESH == 0) {
        BOOK(pool_misses);
        refresh_conn();
    } else {
        busy_us(100);
    }
    pool_unlock();
}

__attribute__((noinline)) void ledger_append(void)
{
    pthread_mutex_lock(&ledger);
    sleep_us(1000);  /* "fsync" while holding the lock */
    BOOK(ledger_holds);
    pthread_mutex_unlock(&ledger);
}

__attribute__((noinline)) void charge_card(void)
{
    busy_us(200);  /* a little real work */
    ledger_append();
}

__attribute__((noinline)) void query_db(int db)
{
    char q = 'q', answer;
    if (write(db, &q, 1) != 1 || read(db, &answer, 1) != 1)
        exit(3);
}

__attribute__((noinline)) void rate_limit(void)
{
    usleep(3000);
}

__attribute__((noinline)) void handle_request(int db)
{
    checkout_conn();
    query_db(db);
    charge_card();
    rate_limit();
    BOOK(requests);
}

static void checkpoint(void)
{
    if (!__atomic_load_n(&paused, __ATOMIC_ACQUIRE))
        return;
    __atomic_add_fetch(&parked, 1, __ATOMIC_ACQ_REL);
    while (sem_wait(&resume_sem) != 0)
        ;
}

static void *worker(void *arg)
{
    int db = (int)(long)arg;
    for (;;) {
        checkpoint();
        handle_request(db);
    }
    return NULL;
}

static void *database(void *arg)
{
    int fd = (int)(long)arg;
    char q;
    pthread_setname_np(pthread_self(), "pay-db");
    while (read(fd, &q, 1) == 1) {
        sleep_us(3000);  /* a slow query */
        if (write(fd, "a", 1) != 1)
            break;
    }
    return NULL;
}

#define GET(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)

static void print_books(void)
{
    printf("{\"pid\": %d, \"requests\": %lu, \"pool_holds\": %lu, \"pool_misses\": %lu, \"lookups\": %lu, "
           "\"lookup_failures\": %lu, \"host\": \"%s\", \"ledger_holds\": %lu}\n",
           getpid(), GET(requests), GET(pool_holds), GET(pool_misses), GET(lookups), GET(lookup_failures), db_host,
           GET(ledger_holds));
    fflush(stdout);
}

/* Lines on stdin: pause, resume. Returns at end of input. */
static void control(void)
{
    char line[64];
    while (fgets(line, sizeof(line), stdin)) {
        if (!strncmp(line, "pause", 5) && !paused) {
            __atomic_store_n(&paused, 1, __ATOMIC_RELEASE);
            while (GET(parked) < WORKERS)
                sleep_us(200);
            print_books();
        } else if (!strncmp(line, "resume", 6) && paused) {
            __atomic_store_n(&parked, 0, __ATOMIC_RELEASE);
            __atomic_store_n(&paused, 0, __ATOMIC_RELEASE);
            for (int i = 0; i < WORKERS; i++)
                sem_post(&resume_sem);
        }
    }
}

int main(int argc, char **argv)
{
    int ctl = argc > 1 && !strcmp(argv[1], "--control");
    int seconds = !ctl && argc > 1 ? atoi(argv[1]) : 0;
    const char *host = getenv("PAY_DB_HOST");
    if (host && *host && strlen(host) < 200 && !strpbrk(host, "\"\\"))
        db_host = host;
    sem_init(&resume_sem, 0, 0);
    pthread_t th;
    for (int i = 0; i < WORKERS; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
            return 2;
        pthread_create(&th, NULL, database, (void *)(long)sv[1]);
        pthread_create(&th, NULL, worker, (void *)(long)sv[0]);
    }
    printf("pay-svc: serving (pid %d)\n", getpid());
    fflush(stdout);
    if (ctl) {
        control();
        return 0;
    }
    for (int s = 0; !seconds || s < seconds; s++)
        sleep(1);
    printf("pay-svc: %lu requests\n", GET(requests));
    return 0;
}
