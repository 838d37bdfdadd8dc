/*
 * jail-probe: tries one thing a jailed VMM must not be able to do, so that
 * microvm/tests/jail.rs can check the jail and its seccomp policy stop it.
 *
 * Usage: jail-probe ATTEMPT [ARG]
 *
 *   ok                   does nothing (proves the probe runs under the filter)
 *   ptrace               ptrace(PTRACE_TRACEME)
 *   mount                mount a tmpfs on /run
 *   bpf                  bpf(BPF_PROG_LOAD) of a two-instruction program
 *   kexec_load           kexec_load with no segments
 *   execve               execve of itself (argv[0]) with the attempt "ok"
 *   connect-containerd   socket(AF_UNIX) + connect to ARG (default
 *                        /run/containerd/containerd.sock; "@name" is an
 *                        abstract socket)
 *   open-host            open host files that must not be in the jail
 *   share-modes DIR      on a writable share DIR, as a 9p server would:
 *                        create DIR/f 0644, chmod it 04755, 02755 and 0755,
 *                        create DIR/s 04755, mknod the FIFO DIR/p 04644,
 *                        set the xattrs security.capability (a file
 *                        capability granting CAP_SETUID), trusted.mu2 and
 *                        user.mu2 on DIR/f
 *
 * After each system call that returns, one line goes to stderr (stdout is
 * /dev/null in the jail):
 *
 *   <attempt> returned <r> errno <e>
 *
 * (open-host: "open-host <path> returned ..."; a failed socket(): "socket
 * returned ..."), then the probe exits 0. A call the policy forbids never
 * returns: the kernel kills the probe with SIGSYS. Raw syscall() throughout,
 * so that glibc adds no system call of its own; built static (no loader,
 * no libraries) by scripts/build-test-bundles.
 *
 * Run as root outside a jail, these attempts would succeed for real (the
 * mount would hide the host's /run). The jail execs the probe with an empty
 * environment, so the probe refuses to run with a non-empty one (exit 3);
 * the check makes no system call.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef PTRACE_TRACEME
#define PTRACE_TRACEME 0
#endif

/* One line on stderr; r and e were taken right after the call. */
static void report(const char *what, long r, int e)
{
    char line[512];
    int n = snprintf(line, sizeof line, "%s returned %ld errno %d\n", what, r, r < 0 ? e : 0);
    if (n > 0)
        (void)syscall(SYS_write, 2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

/* Runs one call and reports it. */
#define TRY(what, call)              \
    do {                             \
        errno = 0;                   \
        long r_ = (long)(call);      \
        report((what), r_, errno);   \
    } while (0)

static int try_bpf(void)
{
    /* r0 = 0; exit */
    struct bpf_insn insns[2];
    memset(insns, 0, sizeof insns);
    insns[0].code = BPF_ALU64 | BPF_MOV | BPF_K;
    insns[0].dst_reg = BPF_REG_0;
    insns[0].imm = 0;
    insns[1].code = BPF_JMP | BPF_EXIT;
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
    attr.insns = (unsigned long)insns;
    attr.insn_cnt = 2;
    attr.license = (unsigned long)"GPL";
    TRY("bpf", syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof attr));
    return 0;
}

static int try_connect(const char *path)
{
    errno = 0;
    long fd = syscall(SYS_socket, AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        report("socket", fd, errno);
        return 0;
    }
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    size_t len = strlen(path);
    if (len >= sizeof addr.sun_path)
        len = sizeof addr.sun_path - 1;
    memcpy(addr.sun_path, path, len);
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    if (path[0] == '@') {
        /* Abstract: a leading NUL, no terminating one. */
        addr.sun_path[0] = '\0';
        alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    }
    TRY("connect-containerd", syscall(SYS_connect, fd, &addr, alen));
    return 0;
}

static int try_open_host(void)
{
    static const char *const paths[] = {
        "/etc/shadow",
        "/etc/passwd",
        "/root",
        "/home",
        "/var",
        "/../../etc/passwd",
        "/proc/self/root/etc/passwd",
        "/run/containerd/containerd.sock",
        "/run/mu2",
        "/sys/fs/cgroup",
    };
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        char what[256];
        snprintf(what, sizeof what, "open-host %s", paths[i]);
        TRY(what, syscall(SYS_openat, AT_FDCWD, paths[i], O_RDONLY | O_CLOEXEC));
    }
    return 0;
}

/* What a VMM that does the guest's bidding can do to modes and xattrs on a
 * writable share (docs/jailer.md, "Writable shares"). */
static int try_share_modes(const char *dir)
{
    char f[1024], s[1024], p[1024];
    snprintf(f, sizeof f, "%s/f", dir);
    snprintf(s, sizeof s, "%s/s", dir);
    snprintf(p, sizeof p, "%s/p", dir);
    TRY("create f 0644", syscall(SYS_openat, AT_FDCWD, f, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    TRY("chmod f 04755", syscall(SYS_chmod, f, 04755));
    TRY("chmod f 02755", syscall(SYS_chmod, f, 02755));
    TRY("chmod f 0755", syscall(SYS_chmod, f, 0755));
    TRY("create s 04755", syscall(SYS_openat, AT_FDCWD, s, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 04755));
    TRY("mknod p 04644", syscall(SYS_mknodat, AT_FDCWD, p, S_IFIFO | 04644, 0));
    /* struct vfs_cap_data, VFS_CAP_REVISION_2 with the effective flag,
     * CAP_SETUID (7) permitted: what `setcap cap_setuid+ep` writes. */
    static const unsigned char cap[20] = {0x01, 0, 0, 0x02, 0x80};
    TRY("setxattr security.capability",
        syscall(SYS_lsetxattr, f, "security.capability", cap, sizeof cap, 0));
    TRY("setxattr trusted.mu2", syscall(SYS_lsetxattr, f, "trusted.mu2", "v", 1, 0));
    TRY("setxattr user.mu2", syscall(SYS_lsetxattr, f, "user.mu2", "v", 1, 0));
    return 0;
}

int main(int argc, char **argv, char **envp)
{
    if (envp != NULL && envp[0] != NULL) {
        static const char refuse[] =
            "jail-probe: refusing to run outside a jail (the environment is not empty)\n";
        (void)syscall(SYS_write, 2, refuse, sizeof refuse - 1);
        return 3;
    }
    if (argc < 2) {
        static const char usage[] = "usage: jail-probe ATTEMPT [ARG]\n";
        (void)syscall(SYS_write, 2, usage, sizeof usage - 1);
        return 2;
    }
    const char *a = argv[1];
    const char *arg = argc > 2 ? argv[2] : NULL;

    if (strcmp(a, "ok") == 0) {
        report("ok", 0, 0);
    } else if (strcmp(a, "ptrace") == 0) {
        TRY("ptrace", syscall(SYS_ptrace, PTRACE_TRACEME, 0L, 0L, 0L));
    } else if (strcmp(a, "mount") == 0) {
        TRY("mount", syscall(SYS_mount, "tmpfs", "/run", "tmpfs", 0UL, NULL));
    } else if (strcmp(a, "bpf") == 0) {
        try_bpf();
    } else if (strcmp(a, "kexec_load") == 0) {
        TRY("kexec_load", syscall(SYS_kexec_load, 0UL, 0UL, NULL, 0UL));
    } else if (strcmp(a, "execve") == 0) {
        char *const av[] = {argv[0], (char *)"ok", NULL};
        char *const ev[] = {NULL};
        TRY("execve", syscall(SYS_execve, arg ? arg : argv[0], av, ev));
    } else if (strcmp(a, "connect-containerd") == 0) {
        try_connect(arg ? arg : "/run/containerd/containerd.sock");
    } else if (strcmp(a, "open-host") == 0) {
        try_open_host();
    } else if (strcmp(a, "share-modes") == 0 && arg != NULL) {
        try_share_modes(arg);
    } else {
        static const char unknown[] = "jail-probe: unknown attempt\n";
        (void)syscall(SYS_write, 2, unknown, sizeof unknown - 1);
        return 2;
    }
    return 0;
}
