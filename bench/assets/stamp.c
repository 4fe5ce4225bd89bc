/*
 * nixboot-bench's stage-2 entry: the /sbin/init every initrd under test hands over to.
 * Its first act is the "stage 2 reached" stamp, a line in the kernel log (the clock of the
 * kernel's own "Run /init as init process"); then it execs the report script, stage2.sh.
 * Freestanding (no libc, no runtime start-up, 9 kB) so that the stamp comes
 * microseconds after the exec, whatever reads the script's interpreter would cost.
 *
 * nixboot-bench builds it per share:
 *   cc -static -no-pie -nostdlib -ffreestanding -fno-stack-protector -O2 -s \
 *      -DBUSYBOX='"/bin/busybox"' -DSCRIPT='"/sbin/stage2.sh"' -o init stamp.c
 */
#ifndef BUSYBOX
#error "define BUSYBOX, the busybox that runs the script"
#endif
#ifndef SCRIPT
#error "define SCRIPT, the path of stage2.sh"
#endif

static long sys3(long n, long a, long b, long c)
{
	long r;
	__asm__ volatile("syscall"
			 : "=a"(r)
			 : "a"(n), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return r;
}

#define SYS_write 1
#define SYS_open 2
#define SYS_close 3
#define SYS_execve 59
#define SYS_exit 60
#define O_WRONLY 1

static const char msg[] = "nixboot-bench: stage 2\n";

__attribute__((used, noreturn)) void stamp_main(long *sp)
{
	long argc = sp[0];
	char **envp = (char **)(sp + 1 + argc + 1);
	long fd = sys3(SYS_open, (long)"/dev/kmsg", O_WRONLY, 0);
	if (fd >= 0) {
		sys3(SYS_write, fd, (long)msg, sizeof msg - 1);
		sys3(SYS_close, fd, 0, 0);
	}
	/* The script skips its own stamp when told this one was made. */
	char *args[] = { "sh", SCRIPT, fd >= 0 ? "nixboot-bench-stamped" : "", 0 };
	sys3(SYS_execve, (long)BUSYBOX, (long)args, (long)envp);
	sys3(SYS_exit, 127, 0, 0);
	for (;;)
		;
}

__asm__(".text\n"
	".globl _start\n"
	"_start:\n"
	"	mov %rsp, %rdi\n"
	"	and $-16, %rsp\n"
	"	call stamp_main\n");
