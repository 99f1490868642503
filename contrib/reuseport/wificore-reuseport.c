/*
 * wificore-reuseport: lets several radiusd processes share one UDP port, and
 * stops a radiusd without dropping what NAS devices already sent it.
 *
 * Shared ports. rlm_python3 runs one Python call at a time per radiusd
 * process, so on a machine with N cores rlm_wificore runs N radiusd
 * processes. NAS devices know one address and port, and FreeRADIUS 3.2 has no
 * option to bind with SO_REUSEPORT. Preloaded into radiusd (LD_PRELOAD), this
 * library sets SO_REUSEPORT on every UDP socket just before it is bound; the
 * kernel then spreads the packets over the processes by a hash of source and
 * destination (one NAS address and port always reach the same process, so
 * duplicate detection still works). Only processes of the same user can join
 * a port.
 *
 * Graceful stop. radiusd runs with -t (one event loop): the requests waiting
 * for it are in its sockets' receive queues, and on SIGTERM it exits at once,
 * dropping them (each then costs the NAS a retransmission timeout). Here a
 * SIGTERM first connect()s each RADIUS socket (port != 0) to its own address:
 * the socket then receives nothing new (the kernel gives a port's new packets
 * to the other processes of the port, which skip a connected socket), while
 * what is queued stays readable. radiusd's event loop goes on answering; once
 * no RADIUS socket has anything left to read (checked before each select()),
 * or WIFICORE_DRAIN_S seconds (default 5) have passed, radiusd's own SIGTERM
 * handler runs and radiusd stops as it always does. A second SIGTERM stops it
 * at once; WIFICORE_DRAIN_S=0 turns the drain off.
 *
 * Build: gcc -shared -fPIC -O2 -o wificore-reuseport.so wificore-reuseport.c -ldl
 * (bin/setup does it; see contrib/reuseport/README.md).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_LISTEN 64

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
typedef int (*select_fn)(int, fd_set *, fd_set *, fd_set *, struct timeval *);

static bind_fn real_bind;
static sigaction_fn real_sigaction;
static select_fn real_select;

/* The RADIUS sockets: UDP, bound to a port of their own. */
static int listen_fd[MAX_LISTEN];
static in_port_t listen_port[MAX_LISTEN];
static volatile sig_atomic_t n_listen;

/* radiusd's own SIGTERM disposition, run once the drain is over. */
static struct sigaction app_term;
static volatile sig_atomic_t have_app_term;

enum { IDLE, DRAINING, DONE };
static volatile sig_atomic_t state = IDLE;
static struct timespec drain_until;
static int wake[2] = { -1, -1 };	/* written by the handler: select() returns */
static pid_t owner;
static double drain_s = -1;	/* WIFICORE_DRAIN_S, read when radiusd installs its handler */

static void *next(const char *name)
{
	return dlsym(RTLD_NEXT, name);
}

static double drain_seconds(void)
{
	const char *v = getenv("WIFICORE_DRAIN_S");
	char *end;
	double s;

	if (!v || !*v) return 5.0;
	s = strtod(v, &end);
	if (*end || s < 0 || s > 3600) return 5.0;
	return s;
}

static void run_app_term(int sig)
{
	struct sigaction sa = app_term;

	if (!have_app_term || sa.sa_handler == SIG_DFL) {
		/* radiusd installed nothing: the default action, as without this library. */
		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = SIG_DFL;
		real_sigaction(sig, &sa, NULL);
		raise(sig);
		return;
	}
	if (sa.sa_handler == SIG_IGN) return;
	if (sa.sa_flags & SA_SIGINFO) {
		siginfo_t info;

		memset(&info, 0, sizeof(info));
		info.si_signo = sig;
		info.si_code = SI_USER;
		info.si_pid = getpid();
		sa.sa_sigaction(sig, &info, NULL);
	} else {
		sa.sa_handler(sig);
	}
}

static int port_of(int fd, struct sockaddr_storage *ss, socklen_t *len)
{
	*len = sizeof(*ss);
	if (getsockname(fd, (struct sockaddr *) ss, len) < 0) return -1;
	if (ss->ss_family == AF_INET) return ntohs(((struct sockaddr_in *) ss)->sin_port);
	if (ss->ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *) ss)->sin6_port);
	return -1;
}

/* Async-signal-safe: getsockname, getsockopt, connect, clock_gettime, write. */
static void stop_receiving(void)
{
	int i, type;
	socklen_t tlen;

	for (i = 0; i < n_listen; i++) {
		struct sockaddr_storage ss;
		socklen_t len;
		int port;

		tlen = sizeof(type);
		if (getsockopt(listen_fd[i], SOL_SOCKET, SO_TYPE, &type, &tlen) < 0 || type != SOCK_DGRAM)
			continue;
		port = port_of(listen_fd[i], &ss, &len);
		if (port != listen_port[i]) continue;	/* closed, and the number reused */
		/* Connected to itself: nobody else sends from that address and port. */
		if (ss.ss_family == AF_INET) {
			struct sockaddr_in *a = (struct sockaddr_in *) &ss;

			if (a->sin_addr.s_addr == htonl(INADDR_ANY)) a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		} else {
			struct sockaddr_in6 *a = (struct sockaddr_in6 *) &ss;

			if (!memcmp(&a->sin6_addr, &in6addr_any, sizeof(a->sin6_addr))) a->sin6_addr = in6addr_loopback;
		}
		(void) connect(listen_fd[i], (struct sockaddr *) &ss, len);
	}
}

static void on_term(int sig)
{
	int saved = errno;

	if (getpid() != owner || state != IDLE) {
		/* A second SIGTERM, or a child process: stop now. */
		state = DONE;
		run_app_term(sig);
		errno = saved;
		return;
	}
	clock_gettime(CLOCK_MONOTONIC, &drain_until);
	{
		double s = drain_s;
		long ns = (long) ((s - (long) s) * 1e9) + drain_until.tv_nsec;

		drain_until.tv_sec += (time_t) s + ns / 1000000000L;
		drain_until.tv_nsec = ns % 1000000000L;
	}
	state = DRAINING;
	stop_receiving();
	if (wake[1] >= 0) (void) write(wake[1], "", 1);
	errno = saved;
}

static int drained(void)
{
	struct pollfd p[MAX_LISTEN];
	struct timespec now;
	int i, n = n_listen;

	clock_gettime(CLOCK_MONOTONIC, &now);
	if (now.tv_sec > drain_until.tv_sec ||
	    (now.tv_sec == drain_until.tv_sec && now.tv_nsec >= drain_until.tv_nsec)) return 1;
	for (i = 0; i < n; i++) {
		p[i].fd = listen_fd[i];
		p[i].events = POLLIN;
		p[i].revents = 0;
	}
	if (poll(p, n, 0) <= 0) return 1;
	for (i = 0; i < n; i++) {
		if (p[i].revents & POLLIN) return 0;
	}
	return 1;
}

static int drain_enabled(void)
{
	if (drain_s < 0) drain_s = drain_seconds();
	return drain_s > 0;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
	int type = 0, one = 1, rc;
	socklen_t type_len = sizeof(type);

	if (!real_bind) real_bind = (bind_fn) next("bind");
	if (!real_bind) {
		errno = ENOSYS;
		return -1;
	}
	if (!(addr && (addr->sa_family == AF_INET || addr->sa_family == AF_INET6) &&
	      getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &type_len) == 0 && type == SOCK_DGRAM)) {
		return real_bind(fd, addr, len);
	}
	/* Best effort: without it the bind fails as it would have anyway. */
	(void) setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	rc = real_bind(fd, addr, len);
	if (rc == 0) {
		struct sockaddr_storage ss;
		socklen_t sl;
		int port = port_of(fd, &ss, &sl);

		if (port > 0 && n_listen < MAX_LISTEN && (addr->sa_family == AF_INET ?
		    ((const struct sockaddr_in *) addr)->sin_port : ((const struct sockaddr_in6 *) addr)->sin6_port)) {
			listen_fd[n_listen] = fd;
			listen_port[n_listen] = (in_port_t) port;
			n_listen = n_listen + 1;
			if (wake[0] < 0 && pipe2(wake, O_NONBLOCK | O_CLOEXEC) < 0) wake[0] = wake[1] = -1;
		}
	}
	return rc;
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
	if (!real_sigaction) real_sigaction = (sigaction_fn) next("sigaction");
	if (!real_sigaction) {
		errno = ENOSYS;
		return -1;
	}
	if (sig != SIGTERM || !drain_enabled()) return real_sigaction(sig, act, old);
	if (old) {
		if (have_app_term) {
			*old = app_term;
		} else if (real_sigaction(sig, NULL, old) < 0) {
			return -1;
		}
	}
	if (act) {
		struct sigaction mine;

		if (act->sa_handler == SIG_DFL || act->sa_handler == SIG_IGN) {
			/* Nothing to wait for: as asked. */
			have_app_term = 0;
			return real_sigaction(sig, act, NULL);
		}
		app_term = *act;
		have_app_term = 1;
		owner = getpid();
		memset(&mine, 0, sizeof(mine));
		mine.sa_handler = on_term;
		mine.sa_mask = act->sa_mask;
		mine.sa_flags = act->sa_flags & ~(SA_SIGINFO | SA_RESETHAND);
		return real_sigaction(sig, &mine, NULL);
	}
	return 0;
}

sighandler_t signal(int sig, sighandler_t handler)
{
	struct sigaction act, old;

	memset(&act, 0, sizeof(act));
	act.sa_handler = handler;
	act.sa_flags = SA_RESTART;
	sigemptyset(&act.sa_mask);
	if (sigaction(sig, &act, &old) < 0) return SIG_ERR;
	return old.sa_handler;
}

int select(int nfds, fd_set *r, fd_set *w, fd_set *e, struct timeval *timeout)
{
	int rc, w0 = wake[0];
	char buf[16];

	if (!real_select) real_select = (select_fn) next("select");
	if (!real_select) {
		errno = ENOSYS;
		return -1;
	}
	if (state == DRAINING && drained()) {
		/* Nothing left to answer: radiusd's own handler stops it (its self-pipe). */
		state = DONE;
		run_app_term(SIGTERM);
	}
	if (state != IDLE || w0 < 0 || w0 >= FD_SETSIZE || !r || !have_app_term) {
		return real_select(nfds, r, w, e, timeout);
	}
	/* Woken by the SIGTERM handler whichever thread it ran on. */
	FD_SET(w0, r);
	rc = real_select(nfds > w0 ? nfds : w0 + 1, r, w, e, timeout);
	if (rc > 0 && FD_ISSET(w0, r)) {
		while (read(w0, buf, sizeof(buf)) > 0) {}
		FD_CLR(w0, r);
		/* As if the signal had interrupted this select: the loop calls again. */
		errno = EINTR;
		return -1;
	}
	if (rc >= 0) FD_CLR(w0, r);
	return rc;
}
