/*
 * wificore-reuseport: lets several radiusd processes share one UDP port.
 *
 * rlm_python3 runs one Python call at a time per radiusd process, so on a
 * machine with N cores rlm_wificore runs N radiusd processes. NAS devices
 * know one address and port, and FreeRADIUS 3.2 has no option to bind with
 * SO_REUSEPORT. Preloaded into radiusd (LD_PRELOAD), this library sets
 * SO_REUSEPORT on every UDP socket just before it is bound; the kernel then
 * spreads the packets over the processes by a hash of source and destination
 * (one NAS address and port always reach the same process, so duplicate
 * detection still works). Only processes of the same user can join a port.
 *
 * Build: gcc -shared -fPIC -O2 -o wificore-reuseport.so wificore-reuseport.c -ldl
 * (bin/setup does it; see contrib/reuseport/README.md).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
	static bind_fn real_bind;
	int type = 0, one = 1;
	socklen_t type_len = sizeof(type);

	if (!real_bind) {
		real_bind = (bind_fn) dlsym(RTLD_NEXT, "bind");
		if (!real_bind) {
			errno = ENOSYS;
			return -1;
		}
	}
	if (addr && (addr->sa_family == AF_INET || addr->sa_family == AF_INET6) &&
	    getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &type_len) == 0 && type == SOCK_DGRAM) {
		/* Best effort: without it the bind fails as it would have anyway. */
		(void) setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	}
	return real_bind(fd, addr, len);
}
