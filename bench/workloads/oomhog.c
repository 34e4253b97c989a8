/*
 * oomhog: K processes, one after the other, each moving itself into a memory
 * cgroup (by writing its pid to the cgroup's cgroup.procs) and touching
 * memory until that cgroup's OOM killer kills it. The oomkill benchmark's
 * workload; the bench counts the kills from the cgroup's own counter.
 *
 *   oomhog CGROUP_PROCS K
 *
 * Prints {"seconds", "killed"} (its own wall clock, children killed by SIGKILL).
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void hog(const char *procs)
{
    char pid[32];
    int fd = open(procs, O_WRONLY);
    int n = snprintf(pid, sizeof pid, "%d", (int)getpid());
    if (fd < 0 || write(fd, pid, n) != n)
        _exit(2);
    close(fd);
    for (;;) {  /* 1 MiB at a time, every page touched, never freed */
        char *p = malloc(1 << 20);
        if (!p)
            _exit(3);
        memset(p, 1, 1 << 20);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    long k = atol(argv[2]), killed = 0;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < k; i++) {
        pid_t pid = fork();
        if (pid == 0)
            hog(argv[1]);
        int status = 0;
        if (pid > 0 && waitpid(pid, &status, 0) == pid && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
            killed++;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("{\"seconds\": %.6f, \"killed\": %ld}\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9, killed);
    return killed == k ? 0 : 1;
}
