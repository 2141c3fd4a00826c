/*
 * sendzc: io_uring send vs send_zc over loopback TCP (127.0.0.1).
 *
 * Question: above what message size does IORING_OP_SEND_ZC start to pay?
 * On loopback the kernel copies zero-copy pages anyway when it delivers the
 * skb to the local socket (skb_orphan_frags_rx), and every send_zc costs a
 * notification CQE, so the answer may well be "never"; this measures it.
 *
 * Sender: one io_uring, one send in flight at a time (as the proxy keeps one
 * send per socket). A buffer is reused only after its send CQE *and* its
 * notification CQE (IORING_CQE_F_NOTIF) arrived. Receiver: a thread doing
 * blocking recv() into a 1 MiB buffer and discarding.
 *
 * Modes, interleaved per size and repeated for R rounds (medians printed):
 *   send               IORING_OP_SEND, copying
 *   send_zc            IORING_OP_SEND_ZC, one plain buffer
 *   send_zc_fixed      IORING_OP_SEND_ZC, one registered buffer
 *   send_zc_fixed_rN   as above, N buffers in rotation so notifications overlap
 *
 * Build: cc -O2 -Wall -o /tmp/sendzc sendzc.c -luring -lpthread
 * Usage: sendzc [-t seconds_per_cell] [-r rounds] [-n rotation_buffers]
 *               [-s 1K,4K,...] [-v]
 * Needs kernel >= 6.2 (IORING_SEND_ZC_REPORT_USAGE).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

/* liburing 2.3 predates these (kernel 6.2 uapi). */
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3)
#endif
#ifndef IORING_NOTIF_USAGE_ZC_COPIED
#define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31)
#endif

#define MAX_SIZES 16
#define MAX_ROUNDS 101
#define MAX_ROT 32
#define RECV_BUF (1u << 20)

enum op { OP_SEND, OP_ZC, OP_ZC_FIXED };
struct mode {
	char name[32];
	enum op op;
	int nbufs;
};

struct result {
	double gbps, snd_ns_kib, proc_ns_kib;
	double nwait; /* fraction of wall time blocked waiting for a notification */
	uint64_t notifs, copied;
};

/* Per-cell completion state, updated by reap(). */
struct cell {
	int pending[MAX_ROT]; /* notifications outstanding per buffer */
	int send_done;
	int send_res;
	uint64_t notifs, copied;
};

static _Atomic uint64_t received; /* bytes the receiver has consumed */
static int verbose;

static void die(const char *fmt, ...)
{
	va_list ap;
	fputs("sendzc: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static double now_s(clockid_t clk)
{
	struct timespec ts;
	if (clock_gettime(clk, &ts) != 0)
		die("clock_gettime: %s", strerror(errno));
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double proc_cpu_s(void)
{
	struct rusage ru;
	if (getrusage(RUSAGE_SELF, &ru) != 0)
		die("getrusage: %s", strerror(errno));
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 +
	       ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

static void *receiver(void *arg)
{
	int fd = *(int *)arg;
	char *buf = malloc(RECV_BUF);
	if (!buf)
		die("receiver: out of memory");
	for (;;) {
		ssize_t n = recv(fd, buf, RECV_BUF, 0);
		if (n == 0)
			break;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("recv: %s", strerror(errno));
		}
		atomic_fetch_add_explicit(&received, (uint64_t)n, memory_order_release);
	}
	free(buf);
	return NULL;
}

/* Connected loopback TCP pair: *snd is the client end, *rcv the accepted one. */
static void tcp_pair(int *snd, int *rcv)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	int one = 1;
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (l < 0)
		die("socket: %s", strerror(errno));
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(l, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(l, 1) != 0 ||
	    getsockname(l, (struct sockaddr *)&a, &len) != 0)
		die("bind/listen 127.0.0.1: %s", strerror(errno));
	*snd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (*snd < 0)
		die("socket: %s", strerror(errno));
	if (connect(*snd, (struct sockaddr *)&a, sizeof(a)) != 0)
		die("connect: %s", strerror(errno));
	*rcv = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	if (*rcv < 0)
		die("accept: %s", strerror(errno));
	/* The proxy sets TCP_NODELAY; match it so small sends are not coalesced. */
	if (setsockopt(*snd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0)
		die("setsockopt TCP_NODELAY: %s", strerror(errno));
	close(l);
}

/* Consume every ready CQE; if none is ready and `wait`, block for one. */
static void reap(struct io_uring *ring, struct cell *c, int wait)
{
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;

	if (wait) {
		int ret = io_uring_wait_cqe(ring, &cqe);
		if (ret < 0)
			die("io_uring_wait_cqe: %s", strerror(-ret));
	}
	io_uring_for_each_cqe(ring, head, cqe) {
		int slot = (int)cqe->user_data;
		n++;
		if (cqe->flags & IORING_CQE_F_NOTIF) {
			/* Buffer `slot` is free again once this arrives. */
			c->pending[slot]--;
			c->notifs++;
			if ((uint32_t)cqe->res & IORING_NOTIF_USAGE_ZC_COPIED)
				c->copied++;
		} else {
			c->send_done = 1;
			c->send_res = cqe->res;
			/* F_MORE: a notification for this request will follow. */
			if (cqe->flags & IORING_CQE_F_MORE)
				c->pending[slot]++;
		}
	}
	io_uring_cq_advance(ring, n);
}

/* One measured cell: send `size`-byte messages for `dur` seconds. */
static struct result run_cell(struct io_uring *ring, int fd, char *region,
			      const struct mode *m, size_t size, double dur)
{
	static uint64_t total_sent; /* across cells; the receiver's counter never resets */
	struct cell c = { 0 };
	struct result r = { 0 };
	uint64_t sent = 0;
	int slot = 0;
	double nwait = 0;
	double w0 = now_s(CLOCK_MONOTONIC), t0 = now_s(CLOCK_THREAD_CPUTIME_ID);
	double p0 = proc_cpu_s(), deadline = w0 + dur;

	while (now_s(CLOCK_MONOTONIC) < deadline) {
		char *buf = region + (size_t)slot * size;
		size_t off = 0;

		if (c.pending[slot] > 0) { /* buffer still referenced by the kernel */
			double b = now_s(CLOCK_MONOTONIC);
			while (c.pending[slot] > 0)
				reap(ring, &c, 1);
			nwait += now_s(CLOCK_MONOTONIC) - b;
		}
		while (off < size) { /* re-issue the rest after a short send */
			struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
			int ret;
			if (!sqe)
				die("io_uring_get_sqe: submission queue full");
			if (m->op == OP_SEND)
				io_uring_prep_send(sqe, fd, buf + off, size - off, MSG_NOSIGNAL);
			else if (m->op == OP_ZC)
				io_uring_prep_send_zc(sqe, fd, buf + off, size - off, MSG_NOSIGNAL,
						      IORING_SEND_ZC_REPORT_USAGE);
			else
				io_uring_prep_send_zc_fixed(sqe, fd, buf + off, size - off, MSG_NOSIGNAL,
							    IORING_SEND_ZC_REPORT_USAGE, 0);
			io_uring_sqe_set_data64(sqe, (uint64_t)slot);
			c.send_done = 0;
			ret = io_uring_submit_and_wait(ring, 1);
			if (ret != 1)
				die("io_uring_submit_and_wait: %s", ret < 0 ? strerror(-ret) : "not submitted");
			reap(ring, &c, 0);
			while (!c.send_done)
				reap(ring, &c, 1);
			if (c.send_res < 0)
				die("%s of %zu bytes: %s%s", m->name, size - off, strerror(-c.send_res),
				    c.send_res == -EINVAL && m->op != OP_SEND
					    ? " (kernel < 6.2 lacks IORING_SEND_ZC_REPORT_USAGE?)" : "");
			if (c.send_res == 0)
				die("%s: sent 0 bytes", m->name);
			off += (size_t)c.send_res;
		}
		sent += size;
		slot = (slot + 1) % m->nbufs;
	}
	/* Count a cell only once all its notifications and bytes have landed. */
	for (int i = 0; i < m->nbufs; i++)
		while (c.pending[i] > 0)
			reap(ring, &c, 1);
	total_sent += sent;
	while (atomic_load_explicit(&received, memory_order_acquire) < total_sent) {
		struct timespec ts = { 0, 20000 };
		nanosleep(&ts, NULL);
	}

	double wall = now_s(CLOCK_MONOTONIC) - w0;
	double kib = sent / 1024.0;
	r.gbps = sent / wall / 1e9;
	r.snd_ns_kib = (now_s(CLOCK_THREAD_CPUTIME_ID) - t0) * 1e9 / kib;
	r.proc_ns_kib = (proc_cpu_s() - p0) * 1e9 / kib;
	r.nwait = nwait / wall;
	r.notifs = c.notifs;
	r.copied = c.copied;
	return r;
}

static int cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double median(double *v, int n)
{
	qsort(v, n, sizeof(*v), cmp_dbl);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static size_t parse_size(const char *s)
{
	char *end;
	unsigned long v = strtoul(s, &end, 10);
	if (end == s)
		die("bad size '%s'", s);
	if (*end == 'K' || *end == 'k')
		v <<= 10, end++;
	else if (*end == 'M' || *end == 'm')
		v <<= 20, end++;
	if (*end != '\0' || v == 0 || v > (64ul << 20))
		die("bad size '%s' (use e.g. 4K, 1M; at most 64M)", s);
	return v;
}

static void fmt_size(char *out, size_t n, size_t v)
{
	if (v >= (1u << 20) && v % (1u << 20) == 0)
		snprintf(out, n, "%zuM", v >> 20);
	else if (v >= 1024 && v % 1024 == 0)
		snprintf(out, n, "%zuK", v >> 10);
	else
		snprintf(out, n, "%zu", v);
}

int main(int argc, char **argv)
{
	size_t sizes[MAX_SIZES] = { 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20 };
	int nsizes = 6, rounds = 3, nrot = 8, opt;
	double dur = 1.0;

	while ((opt = getopt(argc, argv, "t:r:n:s:v")) != -1) {
		switch (opt) {
		case 't': dur = atof(optarg); break;
		case 'r': rounds = atoi(optarg); break;
		case 'n': nrot = atoi(optarg); break;
		case 's':
			nsizes = 0;
			for (char *tok = strtok(optarg, ","); tok; tok = strtok(NULL, ",")) {
				if (nsizes == MAX_SIZES)
					die("at most %d sizes", MAX_SIZES);
				sizes[nsizes++] = parse_size(tok);
			}
			break;
		case 'v': verbose = 1; break;
		default:
			fprintf(stderr, "usage: %s [-t seconds_per_cell] [-r rounds] "
					"[-n rotation_buffers] [-s 1K,4K,...] [-v]\n", argv[0]);
			return 2;
		}
	}
	if (dur <= 0 || rounds < 1 || rounds > MAX_ROUNDS || nrot < 2 || nrot > MAX_ROT || nsizes < 1)
		die("bad arguments: need -t > 0, 1 <= -r <= %d, 2 <= -n <= %d", MAX_ROUNDS, MAX_ROT);

	struct mode modes[4] = {
		{ "send", OP_SEND, 1 },
		{ "send_zc", OP_ZC, 1 },
		{ "send_zc_fixed", OP_ZC_FIXED, 1 },
		{ "", OP_ZC_FIXED, nrot },
	};
	const int nmodes = 4;

	size_t maxsize = 0;
	for (int i = 0; i < nsizes; i++)
		if (sizes[i] > maxsize)
			maxsize = sizes[i];

	/* One region, registered once, holds every buffer of every mode. */
	size_t region_len = (size_t)nrot * maxsize;
	char *region = aligned_alloc(4096, (region_len + 4095) & ~(size_t)4095);
	if (!region)
		die("out of memory for %zu-byte buffer region", region_len);
	memset(region, 'x', region_len); /* fault pages in before timing */

	struct io_uring ring;
	struct io_uring_params p = { .flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN };
	int ret = io_uring_queue_init_params(64, &ring, &p);
	if (ret == -EINVAL) { /* pre-6.0 kernel: plain ring */
		memset(&p, 0, sizeof(p));
		ret = io_uring_queue_init_params(64, &ring, &p);
	}
	if (ret < 0)
		die("io_uring_queue_init: %s", strerror(-ret));
	/* Registered buffers count against RLIMIT_MEMLOCK (often 8 MiB): fewer rotation buffers if needed. */
	for (;;) {
		struct iovec iov = { region, (size_t)nrot * maxsize };
		ret = io_uring_register_buffers(&ring, &iov, 1);
		if (ret == -ENOMEM && nrot > 2) {
			fprintf(stderr, "sendzc: cannot pin %zu bytes (RLIMIT_MEMLOCK), using -n %d\n",
				iov.iov_len, nrot / 2);
			nrot /= 2;
			continue;
		}
		if (ret < 0)
			die("io_uring_register_buffers(%zu bytes): %s%s", iov.iov_len, strerror(-ret),
			    ret == -ENOMEM ? " (RLIMIT_MEMLOCK too low? raise `ulimit -l`)" : "");
		break;
	}
	modes[3].nbufs = nrot;
	snprintf(modes[3].name, sizeof(modes[3].name), "send_zc_fixed_r%d", nrot);

	int sfd, rfd;
	pthread_t th;
	tcp_pair(&sfd, &rfd);
	if ((ret = pthread_create(&th, NULL, receiver, &rfd)) != 0)
		die("pthread_create: %s", strerror(ret));

	/* Warm-up (unmeasured): grow TCP windows, touch every code path once. */
	for (int m = 0; m < nmodes; m++)
		run_cell(&ring, sfd, region, &modes[m], maxsize, dur < 0.1 ? dur : 0.1);

	static struct result res[MAX_SIZES][4][MAX_ROUNDS];
	for (int rd = 0; rd < rounds; rd++)
		for (int s = 0; s < nsizes; s++)
			for (int m = 0; m < nmodes; m++) {
				struct result *r = &res[s][m][rd];
				*r = run_cell(&ring, sfd, region, &modes[m], sizes[s], dur);
				if (verbose)
					fprintf(stderr, "round %d %7zu %-18s %7.3f GB/s %8.1f %8.1f ns/KiB nwait %.2f\n",
						rd, sizes[s], modes[m].name, r->gbps, r->snd_ns_kib, r->proc_ns_kib, r->nwait);
			}

	if (shutdown(sfd, SHUT_WR) != 0)
		die("shutdown: %s", strerror(errno));
	if ((ret = pthread_join(th, NULL)) != 0)
		die("pthread_join: %s", strerror(ret));

	struct utsname u;
	uname(&u);
	printf("# sendzc: loopback TCP, 1 send in flight, %.2f s/cell, %d rounds (medians), "
	       "kernel %s, %ld CPUs\n", dur, rounds, u.release, sysconf(_SC_NPROCESSORS_ONLN));
	printf("# snd = sender thread CPU (incl. loopback softirq run in its context); "
	       "proc = whole process CPU (getrusage)\n");
	printf("# copied = notifications flagged IORING_NOTIF_USAGE_ZC_COPIED (kernel copied the pages anyway)\n");
	printf("# nwait = share of wall time the sender was blocked on a notification before reusing a buffer\n");
	printf("%-5s %-18s %7s %11s %12s %9s %9s %7s %6s\n", "size", "mode", "GB/s", "snd ns/KiB",
	       "proc ns/KiB", "GB/s/send", "CPU/send", "copied", "nwait");
	for (int s = 0; s < nsizes; s++) {
		double base_gbps = 0, base_cpu = 0;
		char sz[24];
		fmt_size(sz, sizeof(sz), sizes[s]);
		for (int m = 0; m < nmodes; m++) {
			double g[MAX_ROUNDS], t[MAX_ROUNDS], pc[MAX_ROUNDS], nw[MAX_ROUNDS];
			uint64_t notifs = 0, copied = 0;
			for (int rd = 0; rd < rounds; rd++) {
				g[rd] = res[s][m][rd].gbps;
				t[rd] = res[s][m][rd].snd_ns_kib;
				pc[rd] = res[s][m][rd].proc_ns_kib;
				nw[rd] = res[s][m][rd].nwait;
				notifs += res[s][m][rd].notifs;
				copied += res[s][m][rd].copied;
			}
			double mg = median(g, rounds), mt = median(t, rounds), mp = median(pc, rounds);
			if (m == 0)
				base_gbps = mg, base_cpu = mp;
			char cp[16] = "-", nws[16] = "-";
			if (notifs) {
				snprintf(cp, sizeof(cp), "%.0f%%", 100.0 * copied / notifs);
				snprintf(nws, sizeof(nws), "%.0f%%", 100.0 * median(nw, rounds));
			}
			/* CPU/send: proc CPU per byte relative to plain send (<1 means zc is cheaper). */
			printf("%-5s %-18s %7.3f %11.1f %12.1f %9.2f %9.2f %7s %6s\n", sz, modes[m].name, mg, mt, mp,
			       mg / base_gbps, mp / base_cpu, cp, nws);
		}
	}

	io_uring_queue_exit(&ring);
	close(sfd);
	close(rfd);
	free(region);
	return 0;
}
