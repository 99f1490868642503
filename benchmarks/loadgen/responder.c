/*
 * responder - trivial RADIUS responder for measuring radload's own ceiling.
 *
 * Listens on one UDP port of a loopback address (127.0.0.0/8 only) and
 * answers every Access-Request with an Access-Accept and every
 * Accounting-Request with an Accounting-Response, both without attributes
 * and signed with the shared secret:
 *   Response Authenticator = MD5(Code+Id+Length+RequestAuth+Secret).
 * The Request Authenticator of an Accounting-Request is verified first
 * (RFC 2866); a request that fails it is dropped and counted. Other codes
 * and malformed packets are dropped and counted.
 *
 * Options:
 *   --secret S          shared secret (required)
 *   --bind ADDR         loopback address to listen on (default 127.0.0.1)
 *   --port P            UDP port, 0 = pick a free one (default 0)
 *   --reject-every N    answer every Nth Access-Request with Access-Reject
 *   --drop-every N      drop (do not answer) every Nth request
 *   --max-seconds S     exit after S seconds (default 600)
 *   --max-packets N     exit after N requests (default 1000000000)
 *
 * When the socket is bound it prints "PORT <port>" and a newline on
 * stdout. On SIGTERM/SIGINT or a limit it prints its counters as one JSON
 * object on stderr and exits 0.
 *
 * Build: gcc -O2 -Wall -o responder responder.c   (needs only gcc and libc)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "md5.h"

#define BATCH 64
#define MAX_PKT 4096
#define SOCKBUF (4 * 1024 * 1024)

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *msg)
{
    fprintf(stderr, "responder: %s\n", msg);
    exit(2);
}

int main(int argc, char **argv)
{
    const char *secret = NULL, *bind_addr = "127.0.0.1";
    long port = 0, reject_every = 0, drop_every = 0;
    double max_seconds = 600;
    unsigned long long max_packets = 1000000000ull;

    static const struct option opts[] = {
        {"secret", required_argument, 0, 's'},
        {"bind", required_argument, 0, 'b'},
        {"port", required_argument, 0, 'p'},
        {"reject-every", required_argument, 0, 'r'},
        {"drop-every", required_argument, 0, 'd'},
        {"max-seconds", required_argument, 0, 'S'},
        {"max-packets", required_argument, 0, 'N'},
        {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 's': secret = optarg; break;
        case 'b': bind_addr = optarg; break;
        case 'p': port = strtol(optarg, NULL, 10); break;
        case 'r': reject_every = strtol(optarg, NULL, 10); break;
        case 'd': drop_every = strtol(optarg, NULL, 10); break;
        case 'S': max_seconds = strtod(optarg, NULL); break;
        case 'N': max_packets = strtoull(optarg, NULL, 10); break;
        default:
            fprintf(stderr, "usage: responder --secret S [--bind ADDR] [--port P] "
                            "[--reject-every N] [--drop-every N] [--max-seconds S] "
                            "[--max-packets N]\n");
            return 2;
        }
    }
    if (!secret || !*secret)
        die("--secret is required");
    if (port < 0 || port > 65535 || max_seconds <= 0 || reject_every < 0 || drop_every < 0)
        die("bad option value");
    size_t secretlen = strlen(secret);

    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, bind_addr, &sa.sin_addr) != 1)
        die("--bind must be an IPv4 address");
    if ((ntohl(sa.sin_addr.s_addr) >> 24) != 127)
        die("--bind must be a loopback address (127.0.0.0/8)");

    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket failed");
    int v = SOCKBUF;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &v, sizeof(v)) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof(v));
    v = SOCKBUF;
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &v, sizeof(v)) < 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof(v));
    struct timeval tv = {0, 200000}; /* wake up to check the limits */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        perror("responder: bind");
        return 2;
    }
    socklen_t sl = sizeof(sa);
    getsockname(fd, (struct sockaddr *)&sa, &sl);

    struct sigaction act;
    memset(&act, 0, sizeof(act));
    act.sa_handler = on_signal; /* no SA_RESTART: interrupt recvmmsg */
    sigaction(SIGTERM, &act, NULL);
    sigaction(SIGINT, &act, NULL);

    printf("PORT %u\n", (unsigned)ntohs(sa.sin_port));
    fflush(stdout);

    static uint8_t rbuf[BATCH][MAX_PKT];
    static uint8_t sbuf[BATCH][20];
    static struct sockaddr_in peers[BATCH];
    static struct mmsghdr rmsg[BATCH], smsg[BATCH];
    static struct iovec riov[BATCH], siov[BATCH];
    unsigned long long n_req = 0, n_access = 0, n_acct = 0, n_reject = 0, n_drop = 0,
                       n_bad = 0, n_other = 0;
    const double deadline = mono_s() + max_seconds;

    while (!stop && n_req < max_packets && mono_s() < deadline) {
        for (int i = 0; i < BATCH; i++) {
            riov[i].iov_base = rbuf[i];
            riov[i].iov_len = MAX_PKT;
            memset(&rmsg[i].msg_hdr, 0, sizeof(rmsg[i].msg_hdr));
            rmsg[i].msg_hdr.msg_iov = &riov[i];
            rmsg[i].msg_hdr.msg_iovlen = 1;
            rmsg[i].msg_hdr.msg_name = &peers[i];
            rmsg[i].msg_hdr.msg_namelen = sizeof(peers[i]);
        }
        /* block for the first datagram, then take what is queued */
        int r = recvmmsg(fd, rmsg, BATCH, MSG_WAITFORONE, NULL);
        if (r <= 0)
            continue;
        int ns = 0;
        for (int i = 0; i < r; i++) {
            const uint8_t *p = rbuf[i];
            size_t len = rmsg[i].msg_len;
            n_req++;
            size_t plen = len >= 20 ? (size_t)((p[2] << 8) | p[3]) : 0;
            if (plen < 20 || plen > len) {
                n_other++;
                continue;
            }
            uint8_t code;
            if (p[0] == 1) {
                n_access++;
                code = 2;
                if (reject_every && n_access % (unsigned long long)reject_every == 0) {
                    code = 3;
                    n_reject++;
                }
            } else if (p[0] == 4) {
                uint8_t d[16];
                md5_ctx c;
                md5_init(&c);
                md5_update(&c, p, 4);
                md5_update(&c, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 16);
                md5_update(&c, p + 20, plen - 20);
                md5_update(&c, secret, secretlen);
                md5_final(&c, d);
                if (memcmp(d, p + 4, 16) != 0) {
                    n_bad++;
                    continue;
                }
                n_acct++;
                code = 5;
            } else {
                n_other++;
                continue;
            }
            if (drop_every && n_req % (unsigned long long)drop_every == 0) {
                n_drop++;
                continue;
            }
            uint8_t *q = sbuf[ns];
            q[0] = code;
            q[1] = p[1];
            q[2] = 0;
            q[3] = 20;
            md5_ctx c;
            md5_init(&c);
            md5_update(&c, q, 4);
            md5_update(&c, p + 4, 16);
            md5_update(&c, secret, secretlen);
            md5_final(&c, q + 4);
            siov[ns].iov_base = q;
            siov[ns].iov_len = 20;
            memset(&smsg[ns].msg_hdr, 0, sizeof(smsg[ns].msg_hdr));
            smsg[ns].msg_hdr.msg_iov = &siov[ns];
            smsg[ns].msg_hdr.msg_iovlen = 1;
            smsg[ns].msg_hdr.msg_name = &peers[i];
            smsg[ns].msg_hdr.msg_namelen = rmsg[i].msg_hdr.msg_namelen;
            ns++;
        }
        int off = 0;
        for (int tries = 0; off < ns && tries < 8; tries++) {
            int w = sendmmsg(fd, smsg + off, (unsigned)(ns - off), 0);
            if (w < 0) {
                if (errno == EINTR || errno == EAGAIN || errno == ENOBUFS)
                    continue;
                off++; /* skip the datagram that cannot be sent */
                continue;
            }
            off += w;
        }
    }
    fprintf(stderr, "{\"requests\": %llu, \"access\": %llu, \"accounting\": %llu, "
                    "\"rejected\": %llu, \"dropped\": %llu, \"bad_acct_auth\": %llu, "
                    "\"other\": %llu}\n",
            n_req, n_access, n_acct, n_reject, n_drop, n_bad, n_other);
    close(fd);
    return 0;
}
