/* devdeny: the device rule of a job, as Slurm (ConstrainDevices) and systemd (DeviceAllow=) set
 * it on cgroup v2: a BPF_PROG_TYPE_CGROUP_DEVICE program attached to a cgroup, which the kernel
 * runs for every device node a process below that cgroup opens or creates.
 *
 * Usage: devdeny CGROUP_DIR c|b MAJOR MINOR
 * Attaches, with BPF_F_ALLOW_MULTI as systemd does, a program that denies every access to that
 * one device and allows all others; prints the program's id. The attachment lives as long as the
 * cgroup, after this program exits. Built static by the harness for the guest (`cc -static`).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static long bpf(int cmd, union bpf_attr *attr)
{
    return syscall(__NR_bpf, cmd, attr, sizeof(*attr));
}

#define INSN(code_, dst_, src_, off_, imm_) \
    ((struct bpf_insn){ .code = (code_), .dst_reg = (dst_), .src_reg = (src_), .off = (off_), .imm = (imm_) })

int main(int argc, char **argv)
{
    if (argc != 5 || (strcmp(argv[2], "c") != 0 && strcmp(argv[2], "b") != 0)) {
        fprintf(stderr, "usage: devdeny CGROUP_DIR c|b MAJOR MINOR\n");
        return 2;
    }
    int type = argv[2][0] == 'c' ? BPF_DEVCG_DEV_CHAR : BPF_DEVCG_DEV_BLOCK;
    int major = atoi(argv[3]), minor = atoi(argv[4]);

    /* struct bpf_cgroup_dev_ctx { u32 access_type (access << 16 | type); u32 major; u32 minor; } */
    struct bpf_insn prog[] = {
        INSN(BPF_LDX | BPF_W | BPF_MEM, BPF_REG_2, BPF_REG_1, 0, 0),  /* r2 = access_type */
        INSN(BPF_ALU64 | BPF_AND | BPF_K, BPF_REG_2, 0, 0, 0xffff),   /* r2 &= 0xffff (type) */
        INSN(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_2, 0, 5, type),       /* other type: allow */
        INSN(BPF_LDX | BPF_W | BPF_MEM, BPF_REG_3, BPF_REG_1, 4, 0),  /* r3 = major */
        INSN(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_3, 0, 3, major),      /* other major: allow */
        INSN(BPF_LDX | BPF_W | BPF_MEM, BPF_REG_4, BPF_REG_1, 8, 0),  /* r4 = minor */
        INSN(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_4, 0, 1, minor),      /* other minor: allow */
        INSN(BPF_JMP | BPF_JA, 0, 0, 2, 0),                           /* the device: deny */
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 1),        /* allow: r0 = 1 */
        INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 0),        /* deny: r0 = 0 */
        INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    };
    char log[4096] = "";
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE;
    attr.insns = (unsigned long)prog;
    attr.insn_cnt = sizeof(prog) / sizeof(prog[0]);
    attr.license = (unsigned long)"GPL";
    attr.log_buf = (unsigned long)log;
    attr.log_size = sizeof(log);
    attr.log_level = 1;
    strncpy(attr.prog_name, "devdeny", sizeof(attr.prog_name) - 1);
    int prog_fd = bpf(BPF_PROG_LOAD, &attr);
    if (prog_fd < 0) {
        fprintf(stderr, "devdeny: BPF_PROG_LOAD: %s\n%s\n", strerror(errno), log);
        return 1;
    }
    int cg_fd = open(argv[1], O_RDONLY | O_DIRECTORY);
    if (cg_fd < 0) {
        fprintf(stderr, "devdeny: %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    memset(&attr, 0, sizeof(attr));
    attr.target_fd = cg_fd;
    attr.attach_bpf_fd = prog_fd;
    attr.attach_type = BPF_CGROUP_DEVICE;
    attr.attach_flags = BPF_F_ALLOW_MULTI;
    if (bpf(BPF_PROG_ATTACH, &attr) < 0) {
        fprintf(stderr, "devdeny: BPF_PROG_ATTACH to %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    struct bpf_prog_info info;
    memset(&info, 0, sizeof(info));
    memset(&attr, 0, sizeof(attr));
    attr.info.bpf_fd = prog_fd;
    attr.info.info_len = sizeof(info);
    attr.info.info = (unsigned long)&info;
    if (bpf(BPF_OBJ_GET_INFO_BY_FD, &attr) == 0)
        printf("%u\n", info.id);
    return 0;
}
