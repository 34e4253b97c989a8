/*
 * udpsend: UDP datagrams to 127.0.0.1:PORT, which the bench's nftables rule
 * drops on the input hook of the network namespace it runs in: one kfree_skb
 * (reason NETFILTER_DROP) per datagram, freed in the sender's own context
 * (loopback delivers in the softirq run at the end of the send). The drops
 * benchmark's workload; its events are the rule's own counter.
 *
 *   udpsend CALLS PORT
 *
 * Resident, like gai: prints {"pid": P}, then for each line on stdin sends one
 * round of CALLS datagrams ("go") and prints {"seconds", "cpu", "events"}
 * (events: datagrams sent), or sends until killed ("spin"). Exits at EOF.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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
    long n = argc > 1 ? atol(argv[1]) : 10000;
    int port = argc > 2 ? atoi(argv[2]) : 7071;
    char line[16], msg[32] = "kit-bench";
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0) {
        perror("socket");
        return 1;
    }
    printf("{\"pid\": %d}\n", (int)getpid());
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        int spin = strncmp(line, "spin", 4) == 0;
        do {
            long sent = 0;
            double t = clock_s(CLOCK_MONOTONIC), c = clock_s(CLOCK_PROCESS_CPUTIME_ID);
            for (long i = 0; i < n; i++)
                if (sendto(s, msg, sizeof msg, 0, (struct sockaddr *)&to, sizeof to) == sizeof msg)
                    sent++;
            t = clock_s(CLOCK_MONOTONIC) - t;
            c = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c;
            if (!spin) {
                printf("{\"seconds\": %.6f, \"cpu\": %.6f, \"events\": %ld}\n", t, c, sent);
                fflush(stdout);
            }
        } while (spin);
    }
    return 0;
}
