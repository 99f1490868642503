/*
 * radload - radperf-style RADIUS load generator.
 *
 * Sends pre-encoded RADIUS requests over UDP to one IPv4 target, either
 * closed loop (a fixed window of requests in flight) or open loop (a fixed
 * rate in packets/s), matches the responses by (socket, RADIUS Id), checks
 * their Response Authenticator and prints ONE JSON object with the counts,
 * the latency percentiles and the generator's own CPU use. With
 * --acct-port the Accounting-Requests go to that port of the same host
 * (FreeRADIUS listens for accounting on its own port); the window or rate
 * covers both kinds together.
 *
 * Input file format ("RLD1", written by packets.py):
 *
 *   offset 0   4 octets  magic "RLD1"
 *   then, repeated until the end of the file, one record per packet:
 *              1 octet   kind: 1 = Access-Request, 2 = Accounting-Request
 *              2 octets  length of the packet, big endian (20..4096)
 *              length    the RADIUS packet as sent on the wire
 *
 * The packets are sent in file order, cycling through the file until
 * --count packets were sent. When a packet is sent its Id octet is set to
 * the Id assigned to it (every UDP socket owns Ids 0-255, so with several
 * sockets the window can exceed 256):
 *   - Access-Request: the pre-encoded (random) Request Authenticator is
 *     kept, because User-Password / CHAP are computed with it. The packets
 *     must not carry a Message-Authenticator (it covers the Id).
 *   - Accounting-Request: the Request Authenticator is recomputed,
 *     MD5(Code+Id+Length+16 zero octets+Attributes+Secret) (RFC 2866).
 *
 * A response is matched by (socket, Id). Its Response Authenticator,
 * MD5(Code+Id+Length+RequestAuth+Attributes+Secret) (RFC 2865 section 3),
 * is verified; a mismatch (e.g. a wrong --secret) counts as bad_auth.
 * Every matched response counts as received, and
 *   received = accept + reject + acct_response + other + bad_auth.
 * A request without a response within --timeout counts as lost (no
 * retries). Responses for requests that already timed out count as late.
 *
 * Bounds: at most --count packets are sent, and no packet is sent after
 * --duration seconds; the run then waits for the requests in flight, at
 * most --timeout more seconds. The target must be in 127.0.0.0/8 unless
 * --allow-host names that exact address.
 *
 * Output keys: sent, received, accept, reject, acct_response, other, lost,
 * late (responses matching no request in flight: after the timeout,
 * duplicates, runts), bad_auth, send_errors (packets dropped on a send
 * error other than a full buffer), stalls (open loop: a burst found no free
 * Id), duration_s (first send to the last send or response), wall_s (the
 * whole run), rps (received / duration_s), p50_ms, p90_ms, p99_ms,
 * p999_ms, max_ms, mean_ms (latency of the received responses, from a
 * log-linear histogram with 1/128 relative resolution; max is exact),
 * cpu_user_s, cpu_sys_s, cpu_pct (user+sys of this process during the run,
 * as percent of one core, over wall_s), and the settings (mode, window,
 * rate, sockets, io, batch, timeout_s, packets_in_file, target, acct_port).
 *
 * I/O: non-blocking connected UDP sockets (SO_RCVBUF/SO_SNDBUF 4 MB) in one
 * epoll set, sendmmsg/recvmmsg batches (--io plain: send/recv per packet).
 * Open loop sends the packets that are due in bursts at most every
 * --tick-us microseconds, which keeps the wake-ups (and the CPU) low while
 * holding the average rate exact. With --poll-us (open or closed loop) it
 * collects the responses only every that many microseconds instead of
 * waking for each one; the kernel's receive timestamp of each datagram
 * (SO_TIMESTAMPNS) keeps the latencies exact.
 *
 * Build: gcc -O2 -Wall -o radload radload.c -lm   (needs only gcc and libc)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "md5.h"

#define KIND_ACCESS 1
#define KIND_ACCT 2
#define MAX_PKT 4096
#define SOCKBUF (4 * 1024 * 1024)
#define MAX_SOCKETS 1024
#define MAX_BATCH 256

/* ---------------------------------------------------------------- types */

typedef struct {
    uint8_t kind;
    uint16_t len;
    const uint8_t *data;
} tmpl_t;

typedef struct {
    uint64_t t_sent;  /* CLOCK_MONOTONIC ns */
    int32_t prev;     /* in-flight list, ordered by send time */
    int32_t next;
    uint8_t inflight;
    uint8_t kind;
    uint8_t auth[16]; /* Request Authenticator as sent */
} slot_t;

typedef struct {
    int fd;
    int nfree;
    int head;         /* free Id FIFO: an Id is reused only after the other 255 */
    uint8_t freeq[256];
} sock_t;

/* Sockets connected to one destination port: [first, first + n). */
typedef struct {
    int first;
    int n;
    int rr;           /* socket used by the next burst */
} group_t;

/* Packets prepared for one sendmmsg on socket k. */
typedef struct {
    int k;
    int m;
    int ids[MAX_BATCH];
    struct iovec iov[MAX_BATCH];
} pend_t;

/* Log-linear latency histogram in ns: 1/128 relative resolution. */
#define HIST_SUB 128
#define HIST_N (256 + 56 * HIST_SUB)
static uint64_t hist[HIST_N];
static uint64_t hist_count, hist_max;
static double hist_sum;

/* ---------------------------------------------------------------- state */

static tmpl_t *tmpls;
static size_t ntmpl;
static size_t maxlen;
static uint8_t *filebuf;

static const char *secret;
static size_t secretlen;

static sock_t socks[MAX_SOCKETS];
static int nsock;
static group_t groups[2];        /* 0: all packets, or Access only with --acct-port */
static int ngroups = 1;
static pend_t pend[2];
static slot_t *slots;
static uint8_t *slotbuf;         /* nsock*256 buffers of maxlen octets */
static int32_t list_head = -1, list_tail = -1;
static uint64_t total_inflight;

static size_t cursor;            /* next template to send */
static int use_mmsg = 1;
static int batch = 64;
static int kernel_ts = 0; /* --poll-us: latencies from SO_TIMESTAMPNS */

static uint64_t c_sent, c_recv, c_accept, c_reject, c_acct, c_other, c_lost,
    c_late, c_badauth, c_senderr, c_stalls;
static uint64_t t_first_send, t_last_event;
static int send_blocked;

/* ---------------------------------------------------------------- utils */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *msg)
{
    fprintf(stderr, "radload: %s\n", msg);
    exit(2);
}

static void die_errno(const char *what)
{
    fprintf(stderr, "radload: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void hist_add(uint64_t v)
{
    size_t idx;
    if (v < 256) {
        idx = (size_t)v;
    } else {
        int e = 63 - __builtin_clzll(v);
        size_t sub = (size_t)((v >> (e - 7)) & (HIST_SUB - 1));
        idx = 256 + (size_t)(e - 8) * HIST_SUB + sub;
    }
    hist[idx]++;
    hist_count++;
    hist_sum += (double)v;
    if (v > hist_max)
        hist_max = v;
}

/* Representative value (bucket midpoint) of a histogram bucket, in ns. */
static double hist_value(size_t idx)
{
    if (idx < 256)
        return (double)idx;
    size_t e = (idx - 256) / HIST_SUB + 8;
    size_t sub = (idx - 256) % HIST_SUB;
    double lo = (double)((HIST_SUB + sub) << (e - 7));
    double width = (double)(1ull << (e - 7));
    return lo + width / 2.0;
}

/* Latency at quantile q (0..1) in ms; 0 without samples. */
static double hist_quantile(double q)
{
    if (!hist_count)
        return 0.0;
    uint64_t rank = (uint64_t)ceil(q * (double)hist_count);
    if (rank < 1)
        rank = 1;
    uint64_t acc = 0;
    for (size_t i = 0; i < HIST_N; i++) {
        acc += hist[i];
        if (acc >= rank) {
            double v = hist_value(i);
            if (v > (double)hist_max)
                v = (double)hist_max;
            return v / 1e6;
        }
    }
    return (double)hist_max / 1e6;
}

/* ---------------------------------------------------------------- input */

static void load_file(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        die_errno(path);
    struct stat st;
    if (fstat(fd, &st) < 0)
        die_errno("fstat");
    size_t size = (size_t)st.st_size;
    filebuf = malloc(size ? size : 1);
    if (!filebuf)
        die("out of memory");
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, filebuf + got, size - got);
        if (r <= 0)
            die_errno("read");
        got += (size_t)r;
    }
    close(fd);
    if (size < 4 || memcmp(filebuf, "RLD1", 4) != 0)
        die("input is not an RLD1 packet file");

    size_t cap = 1024;
    tmpls = malloc(cap * sizeof(*tmpls));
    if (!tmpls)
        die("out of memory");
    size_t off = 4;
    while (off < size) {
        if (size - off < 3)
            die("truncated record header");
        uint8_t kind = filebuf[off];
        uint16_t len = (uint16_t)((filebuf[off + 1] << 8) | filebuf[off + 2]);
        off += 3;
        if (kind != KIND_ACCESS && kind != KIND_ACCT)
            die("bad record kind (must be 1 or 2)");
        if (len < 20 || len > MAX_PKT || size - off < len)
            die("bad record length");
        const uint8_t *p = filebuf + off;
        if (((p[2] << 8) | p[3]) != len)
            die("RADIUS Length field does not match the record length");
        if ((kind == KIND_ACCESS && p[0] != 1) || (kind == KIND_ACCT && p[0] != 4))
            die("record kind does not match the RADIUS Code");
        if (ntmpl == cap) {
            cap *= 2;
            tmpls = realloc(tmpls, cap * sizeof(*tmpls));
            if (!tmpls)
                die("out of memory");
        }
        tmpls[ntmpl].kind = kind;
        tmpls[ntmpl].len = len;
        tmpls[ntmpl].data = p;
        ntmpl++;
        if (len > maxlen)
            maxlen = len;
        off += len;
    }
    if (!ntmpl)
        die("packet file holds no packets");
}

/* ------------------------------------------------------------ in-flight */

static void list_append(int32_t s)
{
    slots[s].prev = list_tail;
    slots[s].next = -1;
    if (list_tail >= 0)
        slots[list_tail].next = s;
    else
        list_head = s;
    list_tail = s;
}

static void list_remove(int32_t s)
{
    if (slots[s].prev >= 0)
        slots[slots[s].prev].next = slots[s].next;
    else
        list_head = slots[s].next;
    if (slots[s].next >= 0)
        slots[slots[s].next].prev = slots[s].prev;
    else
        list_tail = slots[s].prev;
}

static void free_id(int k, int id)
{
    sock_t *so = &socks[k];
    so->freeq[(so->head + so->nfree) & 255] = (uint8_t)id;
    so->nfree++;
}

static int take_id(int k)
{
    sock_t *so = &socks[k];
    int id = so->freeq[so->head];
    so->head = (so->head + 1) & 255;
    so->nfree--;
    return id;
}

/* A request left the in-flight set (answered or timed out). */
static void release(int32_t s)
{
    slots[s].inflight = 0;
    list_remove(s);
    total_inflight--;
    free_id(s >> 8, s & 255);
}

/* ----------------------------------------------------------------- send */

/* Copy template t into the slot buffer of (k, id), set the Id, and sign it
 * if it is an Accounting-Request; returns the buffer. */
static uint8_t *prepare(int k, int id, const tmpl_t *t)
{
    int32_t s = (k << 8) | id;
    uint8_t *buf = slotbuf + (size_t)s * maxlen;
    memcpy(buf, t->data, t->len);
    buf[1] = (uint8_t)id;
    if (t->kind == KIND_ACCT) {
        md5_ctx c;
        memset(buf + 4, 0, 16);
        md5_init(&c);
        md5_update(&c, buf, t->len);
        md5_update(&c, secret, secretlen);
        md5_final(&c, buf + 4);
    }
    memcpy(slots[s].auth, buf + 4, 16);
    slots[s].kind = t->kind;
    return buf;
}

static void mark_sent(int k, int id, uint64_t t)
{
    int32_t s = (k << 8) | id;
    slots[s].t_sent = t;
    slots[s].inflight = 1;
    list_append(s);
    total_inflight++;
    c_sent++;
    if (!t_first_send)
        t_first_send = t;
    t_last_event = t;
}

/* Send the pending batch of group g. A pending ICMP error (ECONNREFUSED
 * after an earlier datagram was refused) is consumed and the send goes on.
 * Packets that could not be sent give their Id back; a full socket buffer
 * sets send_blocked (back off briefly), any other error counts one send
 * error. */
static void flush(int g)
{
    static struct mmsghdr msgs[MAX_BATCH];
    pend_t *p = &pend[g];
    int m = p->m;
    if (!m)
        return;
    int fd = socks[p->k].fd;
    int ok = 0, err = 0;
    if (use_mmsg) {
        memset(msgs, 0, sizeof(msgs[0]) * (size_t)m);
        for (int j = 0; j < m; j++) {
            msgs[j].msg_hdr.msg_iov = &p->iov[j];
            msgs[j].msg_hdr.msg_iovlen = 1;
        }
    }
    /* bounded: every round sends at least one packet or consumes one error */
    for (int round = 0; ok < m && round < 2 * m + 2; round++) {
        int r;
        if (use_mmsg) {
            r = sendmmsg(fd, msgs + ok, (unsigned)(m - ok), 0);
        } else {
            r = send(fd, p->iov[ok].iov_base, p->iov[ok].iov_len, 0) < 0 ? -1 : 1;
        }
        if (r > 0) {
            ok += r;
            continue;
        }
        if (r < 0 && errno == ECONNREFUSED)
            continue;
        err = r < 0 ? errno : EAGAIN;
        break;
    }
    uint64_t t = now_ns();
    for (int j = 0; j < ok; j++)
        mark_sent(p->k, p->ids[j], t);
    if (ok < m) {
        for (int j = ok; j < m; j++)
            free_id(p->k, p->ids[j]);
        if (err && err != EAGAIN && err != EWOULDBLOCK && err != ENOBUFS)
            c_senderr++;
        else
            send_blocked = 1;
    }
    p->m = 0;
}

/* A socket of group g with a free Id, starting at the group's current one;
 * -1 if every Id of the group is in flight. */
static int pick_socket(int g)
{
    group_t *gr = &groups[g];
    for (int j = 0; j < gr->n; j++) {
        int idx = gr->rr + j;
        if (idx >= gr->n)
            idx -= gr->n;
        if (socks[gr->first + idx].nfree > 0) {
            gr->rr = idx;
            return gr->first + idx;
        }
    }
    return -1;
}

/* Send up to n packets, the next templates in file order. Packets of one
 * group go out in sendmmsg batches on one socket; each burst moves the
 * group on to its next socket, so Ids are reused as late as possible. */
static void send_packets(uint64_t n)
{
    int used[2] = {0, 0};
    for (uint64_t i = 0; i < n && !send_blocked; i++) {
        const tmpl_t *t = &tmpls[cursor];
        int g = (ngroups == 2 && t->kind == KIND_ACCT) ? 1 : 0;
        int k = pick_socket(g);
        if (k < 0) {
            c_stalls++;
            break;
        }
        pend_t *p = &pend[g];
        if (p->m && (p->k != k || p->m == batch)) {
            flush(g);
            if (send_blocked)
                break;
        }
        cursor = (cursor + 1 == ntmpl) ? 0 : cursor + 1;
        int id = take_id(k);
        p->k = k;
        p->ids[p->m] = id;
        p->iov[p->m].iov_base = prepare(k, id, t);
        p->iov[p->m].iov_len = t->len;
        p->m++;
        used[g] = 1;
    }
    for (int g = 0; g < ngroups; g++) {
        flush(g);
        if (used[g] && ++groups[g].rr >= groups[g].n)
            groups[g].rr = 0;
    }
}

/* -------------------------------------------------------------- receive */

static void handle_response(int k, const uint8_t *buf, size_t len, uint64_t t)
{
    if (len < 20) {
        c_late++;
        return;
    }
    int id = buf[1];
    int32_t s = (k << 8) | id;
    if (!slots[s].inflight) {
        c_late++;
        return;
    }
    size_t plen = (size_t)((buf[2] << 8) | buf[3]);
    c_recv++;
    hist_add(t > slots[s].t_sent ? t - slots[s].t_sent : 0);
    t_last_event = t;
    int ok = 0;
    if (plen >= 20 && plen <= len) {
        uint8_t digest[16];
        md5_ctx c;
        md5_init(&c);
        md5_update(&c, buf, 4);
        md5_update(&c, slots[s].auth, 16);
        md5_update(&c, buf + 20, plen - 20);
        md5_update(&c, secret, secretlen);
        md5_final(&c, digest);
        ok = memcmp(digest, buf + 4, 16) == 0;
    }
    if (!ok) {
        c_badauth++;
    } else if (slots[s].kind == KIND_ACCESS && buf[0] == 2) {
        c_accept++;
    } else if (slots[s].kind == KIND_ACCESS && buf[0] == 3) {
        c_reject++;
    } else if (slots[s].kind == KIND_ACCT && buf[0] == 5) {
        c_acct++;
    } else {
        c_other++;
    }
    release(s);
}

/* When the kernel received the datagram, on the CLOCK_MONOTONIC scale: `mono`
 * (now) minus its age, the kernel's CLOCK_REALTIME stamp against `real` (now). */
static uint64_t arrival_ns(struct msghdr *h, uint64_t mono, uint64_t real)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(c), sizeof(ts));
            uint64_t stamp = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
            uint64_t age = real > stamp ? real - stamp : 0;
            return age < mono ? mono - age : mono;
        }
    }
    return mono;
}

static void receive_on(int k)
{
    static uint8_t ctl[MAX_BATCH][CMSG_SPACE(sizeof(struct timespec))];
    static struct mmsghdr msgs[MAX_BATCH];
    static struct iovec iov[MAX_BATCH];
    static uint8_t bufs[MAX_BATCH][MAX_PKT];
    int fd = socks[k].fd;

    /* bounded: at most 64 rounds per wake-up, the rest waits for the next */
    for (int round = 0; round < 64; round++) {
        if (use_mmsg) {
            for (int j = 0; j < batch; j++) {
                iov[j].iov_base = bufs[j];
                iov[j].iov_len = MAX_PKT;
                memset(&msgs[j].msg_hdr, 0, sizeof(msgs[j].msg_hdr));
                msgs[j].msg_hdr.msg_iov = &iov[j];
                msgs[j].msg_hdr.msg_iovlen = 1;
            }
            if (kernel_ts) {
                for (int j = 0; j < batch; j++) {
                    msgs[j].msg_hdr.msg_control = ctl[j];
                    msgs[j].msg_hdr.msg_controllen = sizeof(ctl[j]);
                }
            }
            int r = recvmmsg(fd, msgs, (unsigned)batch, MSG_DONTWAIT, NULL);
            if (r <= 0) {
                if (r < 0 && errno == ECONNREFUSED)
                    continue;
                return;
            }
            uint64_t t = now_ns();
            uint64_t real = 0;
            if (kernel_ts) {
                struct timespec rt;
                clock_gettime(CLOCK_REALTIME, &rt);
                real = (uint64_t)rt.tv_sec * 1000000000ull + (uint64_t)rt.tv_nsec;
            }
            for (int j = 0; j < r; j++)
                handle_response(k, bufs[j], msgs[j].msg_len,
                                kernel_ts ? arrival_ns(&msgs[j].msg_hdr, t, real) : t);
            if (r < batch)
                return;
        } else {
            for (int j = 0; j < batch; j++) {
                ssize_t r = recv(fd, bufs[0], MAX_PKT, MSG_DONTWAIT);
                if (r < 0) {
                    if (errno == ECONNREFUSED)
                        continue;
                    return;
                }
                handle_response(k, bufs[0], (size_t)r, now_ns());
            }
        }
    }
}

/* ----------------------------------------------------------------- main */

static void usage(void)
{
    fprintf(stderr,
        "usage: radload --file F --target HOST:PORT --secret S\n"
        "               [--window N | --rate PPS] [--count N] [--duration S]\n"
        "               [--timeout S] [--retries 0] [--sockets K] [--source ADDR]\n"
        "               [--acct-port P] [--allow-host ADDR] [--io mmsg|plain]\n"
        "               [--batch B] [--tick-us US]\n"
        "       radload --md5 TEXT   (print the MD5 of TEXT, for testing)\n"
        "  --window N     closed loop: N requests in flight (default 256)\n"
        "  --rate PPS     open loop: send PPS packets per second\n"
        "  --count N      total packets to send (default: the file once)\n"
        "  --duration S   no packet is sent after S seconds (default 60)\n"
        "  --timeout S    a request without response after S s is lost (default 2)\n"
        "  --sockets K    UDP sockets per destination port, each owns Ids 0-255\n"
        "                 (default: enough for the window, or rate*timeout)\n"
        "  --source ADDR  bind the sockets to this local IPv4 address\n"
        "  --acct-port P  send Accounting-Requests to port P of the target host\n"
        "  --allow-host A allow the non-loopback target A (exact address)\n"
        "  --io MODE      mmsg (sendmmsg/recvmmsg, default) or plain (send/recv)\n"
        "  --batch B      packets per sendmmsg/recvmmsg (default 64, max 256)\n"
        "  --tick-us US   open loop: minimum gap between send bursts (default 200)\n"
        "  --poll-us US   collect responses every US microseconds rather than on each\n"
        "                 arrival (closed loop: refill the window then); latencies from\n"
        "                 kernel receive timestamps\n");
    exit(2);
}

static int parse_target(const char *s, struct sockaddr_in *sa)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof(host))
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 1 || port > 65535)
        return -1;
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1)
        return -1;
    return 0;
}

static void set_bufsize(int fd)
{
    int v = SOCKBUF;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &v, sizeof(v)) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof(v));
    v = SOCKBUF;
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &v, sizeof(v)) < 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof(v));
}

static int wait_events(int epfd, struct epoll_event *ev, int maxev, uint64_t wait_ns)
{
    static int have_pwait2 = 1;
    if (have_pwait2) {
        struct timespec ts = {(time_t)(wait_ns / 1000000000ull), (long)(wait_ns % 1000000000ull)};
        int r = epoll_pwait2(epfd, ev, maxev, &ts, NULL);
        if (!(r < 0 && errno == ENOSYS))
            return r;
        have_pwait2 = 0;
    }
    int ms = (int)((wait_ns + 999999) / 1000000);
    return epoll_wait(epfd, ev, maxev, ms);
}

int main(int argc, char **argv)
{
    const char *file = NULL, *target = NULL, *source = NULL, *allow = NULL;
    long window = 0, acct_port = 0;
    double rate = 0, duration = 60, timeout = 2;
    uint64_t count = 0;
    int want_socks = 0, tick_us = 200, poll_us = 0;

    static const struct option opts[] = {
        {"file", required_argument, 0, 'f'},
        {"target", required_argument, 0, 't'},
        {"secret", required_argument, 0, 's'},
        {"window", required_argument, 0, 'w'},
        {"rate", required_argument, 0, 'r'},
        {"count", required_argument, 0, 'c'},
        {"duration", required_argument, 0, 'd'},
        {"timeout", required_argument, 0, 'T'},
        {"retries", required_argument, 0, 'R'},
        {"sockets", required_argument, 0, 'k'},
        {"source", required_argument, 0, 'S'},
        {"acct-port", required_argument, 0, 'a'},
        {"allow-host", required_argument, 0, 'A'},
        {"io", required_argument, 0, 'i'},
        {"batch", required_argument, 0, 'b'},
        {"tick-us", required_argument, 0, 'u'},
        {"poll-us", required_argument, 0, 'o'},
        {"md5", required_argument, 0, 'M'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'f': file = optarg; break;
        case 't': target = optarg; break;
        case 's': secret = optarg; break;
        case 'w': window = strtol(optarg, NULL, 10); break;
        case 'r': rate = strtod(optarg, NULL); break;
        case 'c': count = strtoull(optarg, NULL, 10); break;
        case 'd': duration = strtod(optarg, NULL); break;
        case 'T': timeout = strtod(optarg, NULL); break;
        case 'R':
            if (strtol(optarg, NULL, 10) != 0)
                die("only --retries 0 is supported");
            break;
        case 'k': want_socks = (int)strtol(optarg, NULL, 10); break;
        case 'S': source = optarg; break;
        case 'a': acct_port = strtol(optarg, NULL, 10); break;
        case 'A': allow = optarg; break;
        case 'i':
            if (!strcmp(optarg, "mmsg"))
                use_mmsg = 1;
            else if (!strcmp(optarg, "plain"))
                use_mmsg = 0;
            else
                die("--io must be mmsg or plain");
            break;
        case 'b': batch = (int)strtol(optarg, NULL, 10); break;
        case 'u': tick_us = (int)strtol(optarg, NULL, 10); break;
        case 'o': poll_us = (int)strtol(optarg, NULL, 10); break;
        case 'M': {
            uint8_t d[16];
            md5_ctx c;
            md5_init(&c);
            md5_update(&c, optarg, strlen(optarg));
            md5_final(&c, d);
            for (int i = 0; i < 16; i++)
                printf("%02x", d[i]);
            printf("\n");
            return 0;
        }
        default: usage();
        }
    }
    if (optind != argc || !file || !target || !secret)
        usage();
    secretlen = strlen(secret);
    if (!secretlen)
        die("--secret must not be empty");
    if (window && rate > 0)
        die("use either --window (closed loop) or --rate (open loop)");
    if (rate < 0 || window < 0 || !(duration > 0) || !(timeout > 0))
        die("--rate, --window, --duration and --timeout must be positive");
    if (duration > 86400 || timeout > 600 || rate > 1e8)
        die("--duration is limited to 86400 s, --timeout to 600 s, --rate to 1e8");
    if (batch < 1 || batch > MAX_BATCH)
        die("--batch must be 1..256");
    if (tick_us < 0 || tick_us > 1000000)
        die("--tick-us must be 0..1000000");
    if (poll_us < 0 || poll_us > 100000)
        die("--poll-us must be 0..100000");
    if (poll_us && !use_mmsg)
        die("--poll-us needs --io mmsg (the receive timestamps come with recvmmsg)");
    if (acct_port < 0 || acct_port > 65535)
        die("--acct-port must be 1..65535");
    int open_loop = rate > 0;
    if (!open_loop && !window)
        window = 256;

    struct sockaddr_in dst, dst_acct;
    if (parse_target(target, &dst) < 0)
        die("--target must be IPv4ADDR:PORT");
    uint32_t daddr = ntohl(dst.sin_addr.s_addr);
    if ((daddr >> 24) != 127) {
        struct in_addr a;
        if (!allow || inet_pton(AF_INET, allow, &a) != 1 || a.s_addr != dst.sin_addr.s_addr) {
            fprintf(stderr, "radload: refusing non-loopback target %s "
                            "(pass --allow-host with that exact address)\n", target);
            return 3;
        }
    }
    dst_acct = dst;
    if (acct_port) {
        dst_acct.sin_port = htons((uint16_t)acct_port);
        ngroups = 2;
    }

    load_file(file);
    if (!count)
        count = ntmpl;

    int per_group;
    if (want_socks > 0) {
        per_group = want_socks;
    } else if (open_loop) {
        /* enough Ids for rate*timeout requests in flight */
        double need = ceil(rate * timeout / 256.0);
        per_group = need < 1 ? 1 : (need > 256 ? 256 : (int)need);
    } else {
        per_group = (int)((window + 255) / 256);
    }
    if (per_group * ngroups > MAX_SOCKETS)
        die("too many sockets (max 1024)");
    if (!open_loop && window > (long)per_group * 256)
        die("--window exceeds 256 Ids per socket; raise --sockets");
    nsock = per_group * ngroups;
    for (int g = 0; g < ngroups; g++) {
        groups[g].first = g * per_group;
        groups[g].n = per_group;
        groups[g].rr = 0;
    }

    slots = calloc((size_t)nsock * 256, sizeof(*slots));
    slotbuf = malloc((size_t)nsock * 256 * maxlen);
    if (!slots || !slotbuf)
        die("out of memory");

    struct sockaddr_in src;
    if (source) {
        memset(&src, 0, sizeof(src));
        src.sin_family = AF_INET;
        if (inet_pton(AF_INET, source, &src.sin_addr) != 1)
            die("--source must be an IPv4 address");
    }
    const uint64_t poll_ns = (uint64_t)poll_us * 1000ull;
    if (poll_ns)
        kernel_ts = 1;
    int epfd = epoll_create1(0);
    if (epfd < 0)
        die_errno("epoll_create1");
    for (int k = 0; k < nsock; k++) {
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            die_errno("socket");
        set_bufsize(fd);
        if (kernel_ts) {
            int on = 1;
            if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof(on)) < 0)
                die_errno("setsockopt SO_TIMESTAMPNS");
        }
        if (source && bind(fd, (struct sockaddr *)&src, sizeof(src)) < 0)
            die_errno("bind --source");
        const struct sockaddr_in *to = (k >= per_group) ? &dst_acct : &dst;
        if (connect(fd, (const struct sockaddr *)to, sizeof(*to)) < 0)
            die_errno("connect");
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)k};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
            die_errno("epoll_ctl");
        socks[k].fd = fd;
        for (int id = 0; id < 256; id++)
            socks[k].freeq[id] = (uint8_t)id;
        socks[k].nfree = 256;
    }

    const uint64_t timeout_ns = (uint64_t)(timeout * 1e9);
    const uint64_t tick_ns = (uint64_t)tick_us * 1000ull;
    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    const uint64_t start = now_ns();
    const uint64_t send_end = start + (uint64_t)(duration * 1e9);
    const uint64_t hard_end = send_end + timeout_ns;
    uint64_t next_send = start;
    struct epoll_event evs[256];

    for (;;) {
        uint64_t now = now_ns();
        /* time out the oldest requests */
        while (list_head >= 0 && slots[list_head].t_sent + timeout_ns <= now) {
            c_lost++;
            release(list_head);
        }
        uint64_t attempted = c_sent + c_senderr;
        int sending = attempted < count && now < send_end;
        if (!sending && total_inflight == 0)
            break;
        if (now >= hard_end) {
            while (list_head >= 0) {
                c_lost++;
                release(list_head);
            }
            break;
        }
        send_blocked = 0;
        if (sending && !open_loop) {
            uint64_t n = (uint64_t)window > total_inflight ? (uint64_t)window - total_inflight : 0;
            if (n > count - attempted)
                n = count - attempted;
            if (n)
                send_packets(n);
        } else if (sending && now >= next_send) {
            /* packets due by now according to the schedule */
            double due_f = (double)(now - start) * rate / 1e9 + 1.0;
            uint64_t due = due_f >= (double)count ? count : (uint64_t)due_f;
            if (due > attempted)
                send_packets(due - attempted);
            /* next burst: when the next packet is due, at least one tick away */
            uint64_t due_next = start + (uint64_t)((double)(c_sent + c_senderr) * 1e9 / rate);
            next_send = due_next > now + tick_ns ? due_next : now + tick_ns;
        }

        /* wait for responses, the next timeout or the next send */
        now = now_ns();
        uint64_t wake = hard_end;
        if (list_head >= 0 && slots[list_head].t_sent + timeout_ns < wake)
            wake = slots[list_head].t_sent + timeout_ns;
        if (c_sent + c_senderr < count && now < send_end) {
            if (send_end < wake)
                wake = send_end;
            if (open_loop && next_send < wake)
                wake = next_send;
        }
        uint64_t wait_ns = wake > now ? wake - now : 0;
        if (send_blocked && wait_ns > 100000)
            wait_ns = 100000; /* socket buffer full: retry soon */
        if (!open_loop && total_inflight == 0 && wait_ns > 1000000)
            wait_ns = 1000000; /* nothing in flight after failed sends: retry soon */
        int n;
        if (poll_ns) {
            /* sleep to the next send or poll time, then take what has arrived */
            uint64_t nap = wait_ns < poll_ns ? wait_ns : poll_ns;
            struct timespec ts = {(time_t)(nap / 1000000000ull), (long)(nap % 1000000000ull)};
            if (nap)
                nanosleep(&ts, NULL);
            n = wait_events(epfd, evs, 256, 0);
        } else {
            n = wait_events(epfd, evs, 256, wait_ns);
        }
        if (n < 0 && errno != EINTR)
            die_errno("epoll_wait");
        for (int i = 0; i < n; i++)
            receive_on((int)evs[i].data.u32);
    }

    uint64_t end = now_ns();
    getrusage(RUSAGE_SELF, &ru1);
    double cpu_user = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
                      (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6;
    double cpu_sys = (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                     (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    double wall = (double)(end - start) / 1e9;
    double dur = t_first_send ? (double)(t_last_event - t_first_send) / 1e9 : 0.0;
    double rps = dur > 0 ? (double)c_recv / dur : 0.0;

    printf("{\"sent\": %llu, \"received\": %llu, \"accept\": %llu, \"reject\": %llu, "
           "\"acct_response\": %llu, \"other\": %llu, \"lost\": %llu, \"late\": %llu, "
           "\"bad_auth\": %llu, \"send_errors\": %llu, \"stalls\": %llu, "
           "\"duration_s\": %.6f, \"wall_s\": %.6f, \"rps\": %.1f, "
           "\"p50_ms\": %.4f, \"p90_ms\": %.4f, \"p99_ms\": %.4f, \"p999_ms\": %.4f, "
           "\"max_ms\": %.4f, \"mean_ms\": %.4f, "
           "\"cpu_user_s\": %.4f, \"cpu_sys_s\": %.4f, \"cpu_pct\": %.2f, "
           "\"mode\": \"%s\", \"window\": %ld, \"rate\": %.1f, \"sockets\": %d, "
           "\"io\": \"%s\", \"batch\": %d, \"timeout_s\": %.3f, \"packets_in_file\": %zu, "
           "\"target\": \"%s\", \"acct_port\": %ld, \"poll_us\": %llu}\n",
           (unsigned long long)c_sent, (unsigned long long)c_recv,
           (unsigned long long)c_accept, (unsigned long long)c_reject,
           (unsigned long long)c_acct, (unsigned long long)c_other,
           (unsigned long long)c_lost, (unsigned long long)c_late,
           (unsigned long long)c_badauth, (unsigned long long)c_senderr,
           (unsigned long long)c_stalls, dur, wall, rps,
           hist_quantile(0.50), hist_quantile(0.90), hist_quantile(0.99),
           hist_quantile(0.999), (double)hist_max / 1e6,
           hist_count ? hist_sum / (double)hist_count / 1e6 : 0.0,
           cpu_user, cpu_sys, wall > 0 ? (cpu_user + cpu_sys) / wall * 100.0 : 0.0,
           open_loop ? "open" : "closed", open_loop ? 0L : window, rate, nsock,
           use_mmsg ? "mmsg" : "plain", batch, timeout, ntmpl, target,
           acct_port ? acct_port : (long)ntohs(dst.sin_port),
           (unsigned long long)(poll_ns / 1000));
    return 0;
}
