/*
 * lockloop: N lock/unlock pairs through noinline pool_lock/pool_unlock (which
 * start with push %rbp: emulated at a uprobe) around a pthread mutex (whose
 * functions start with mov in glibc 2.36: single-stepped). Waits for a line
 * on stdin before the loop so a probe can attach first; prints ns per pair.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
__attribute__((noinline)) void pool_lock(pthread_mutex_t *p) { pthread_mutex_lock(p); __asm__ volatile("":::"memory"); }
__attribute__((noinline)) void pool_unlock(pthread_mutex_t *p) { pthread_mutex_unlock(p); __asm__ volatile("":::"memory"); }
static double now(void){struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec+t.tv_nsec/1e9;}
int main(int argc, char **argv) {
  long n = atol(argv[1]); char line[8];
  printf("ready\n"); fflush(stdout);
  if (!fgets(line, sizeof line, stdin)) return 1;
  double t0 = now();
  for (long i = 0; i < n; i++) { pool_lock(&m); pool_unlock(&m); }
  printf("%.1f ns/pair\n", (now()-t0)/n*1e9); fflush(stdout);
  return 0;
}
