/*
 * dio: O_DIRECT I/O on a block device (the bench's own loop device): BLOCK
 * bytes at a time, alternating writes and reads at distinct, non-adjacent
 * offsets, so that no two requests merge and every call is one request
 * issued and completed. The biolatency benchmark's workload; its events are
 * the device's own counters (/sys/block/NAME/stat).
 *
 *   dio CALLS DEVICE BLOCK
 *
 * Resident, like gai: prints {"pid": P}, then for each line on stdin runs one
 * round of CALLS I/Os ("go") and prints {"seconds", "cpu", "events"}
 * (events: I/Os done), or runs until killed ("spin"). Exits at EOF.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double clock_s(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000;
    const char *dev = argc > 2 ? argv[2] : "/dev/loop0";
    long block = argc > 3 ? atol(argv[3]) : 4096;
    char line[16];
    void *buf;
    int fd = open(dev, O_RDWR | O_DIRECT);
    if (fd < 0 || posix_memalign(&buf, 4096, block) != 0) {
        perror(dev);
        return 1;
    }
    memset(buf, 'k', block);
    off_t size = lseek(fd, 0, SEEK_END);
    long slots = size / (2 * block);
    printf("{\"pid\": %d}\n", (int)getpid());
    fflush(stdout);
    long at = 0;
    while (fgets(line, sizeof line, stdin)) {
        int spin = strncmp(line, "spin", 4) == 0;
        do {
            long done = 0;
            double t = clock_s(CLOCK_MONOTONIC), c = clock_s(CLOCK_PROCESS_CPUTIME_ID);
            for (long i = 0; i < n; i++, at = (at + 1) % slots) {
                off_t off = (off_t)at * 2 * block;
                ssize_t r = i & 1 ? pread(fd, buf, block, off) : pwrite(fd, buf, block, off);
                done += r == block;
            }
            t = clock_s(CLOCK_MONOTONIC) - t;
            c = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c;
            if (!spin) {
                printf("{\"seconds\": %.6f, \"cpu\": %.6f, \"events\": %ld}\n", t, c, done);
                fflush(stdout);
            }
        } while (spin);
    }
    return 0;
}
