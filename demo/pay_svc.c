/*
 * pay-svc: a fake payment service for kit's demo. It is slow, and it is not
 * busy: its worker threads spend their time waiting. `kit run offcpu --comm
 * pay-svc` shows where:
 *
 *   ledger_append  a global ledger lock held while the ledger is "written"
 *                  (contended: futex)
 *   query_db       a slow "database" on a Unix socket that answers in 8 ms
 *                  (socket read)
 *   rate_limit     a fixed usleep() between requests (nanosleep through libc)
 *
 * Built by demo/run_demo.py with -fno-omit-frame-pointer. Runs until killed,
 * or for argv[1] seconds.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define WORKERS 4

static pthread_mutex_t ledger = PTHREAD_MUTEX_INITIALIZER;
static volatile unsigned long requests;

static void busy_us(long us)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do
        clock_gettime(CLOCK_MONOTONIC, &t);
    while ((t.tv_sec - t0.tv_sec) * 1000000L + (t.tv_nsec - t0.tv_nsec) / 1000 < us);
}

__attribute__((noinline)) void ledger_append(void)
{
    pthread_mutex_lock(&ledger);
    struct timespec ts = {0, 6 * 1000 * 1000};  /* "fsync" while holding the lock */
    nanosleep(&ts, NULL);
    requests++;
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
    query_db(db);
    charge_card();
    rate_limit();
}

static void *worker(void *arg)
{
    int db = (int)(long)arg;
    for (;;)
        handle_request(db);
    return NULL;
}

static void *database(void *arg)
{
    int fd = (int)(long)arg;
    char q;
    pthread_setname_np(pthread_self(), "pay-db");
    while (read(fd, &q, 1) == 1) {
        struct timespec ts = {0, 8 * 1000 * 1000};  /* a slow query */
        nanosleep(&ts, NULL);
        if (write(fd, "a", 1) != 1)
            break;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int seconds = argc > 1 ? atoi(argv[1]) : 0;
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
    for (int s = 0; !seconds || s < seconds; s++)
        sleep(1);
    printf("pay-svc: %lu requests\n", requests);
    return 0;
}
