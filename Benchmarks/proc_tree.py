"""The /proc readings of the Benchmarks scripts: process trees, their CPU ticks, who listens on a port."""

import os

def read_process_table():
    """pid -> (ppid, utime + stime + cutime + cstime in ticks) for every process."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                text = handle.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after the last ')'.
        fields = text[text.rfind(")") + 2:].split()
        ppid = int(fields[1])
        ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        table[int(name)] = (ppid, ticks)
    return table


def process_tree(root, table):
    children = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        if pid in table:
            tree.append(pid)
            stack.extend(children.get(pid, []))
    return tree


def tree_cpu_ticks(*roots):
    """CPU ticks of `roots` and all their descendants, alive or exited and
    reaped, from one read of the process table.

    A descendant alive at both samples counts through its own times; one that
    exited and was reaped in between moves into its parent's cutime/cstime
    with its whole lifetime, which the difference of two samples turns into
    exactly its time inside the window."""
    table = read_process_table()
    return sum(table[pid][1] for root in roots for pid in process_tree(root, table))


def tree_size(root):
    return len(process_tree(root, read_process_table()))


def listening_inodes(port):
    inodes = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as handle:
                next(handle)
                for line in handle:
                    fields = line.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except OSError:
            pass
    return inodes


def tree_listens_on(root, port):
    """True when a process of `root`'s tree holds the socket listening on `port`."""
    inodes = listening_inodes(port)
    if not inodes:
        return False
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid in process_tree(root, read_process_table()):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                        return True
                except OSError:
                    continue
        except OSError:
            continue
    return False
