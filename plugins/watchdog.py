"""The first process of every plugin run: starts the plugin, and ends the run if the service dies.

``python -I -S -c <this file> FD SCOPE -- ARGV...``: FD is the read end of the service's
lifeline pipe, whose write end only the service holds, so it reads end-of-file exactly when
the service is gone, however it died. The watchdog runs ARGV as its child and waits for
whichever comes first: the child's exit, which it passes on as its own (a death by signal
as that same signal), or the lifeline's end, when it kills SCOPE with SIGKILL: ``-1``
(every process of the run's PID namespace) in the sandbox, ``0`` (the run's process
group) without one.

bubblewrap's own ``--die-with-parent`` cannot cover this alone: the sandbox's init asks
for its parent-death signal only once the sandbox is set up, so a service killed during
set-up would leave the run to go on, unseen, for as long as the plugin likes.

Run with ``-c`` from this file's text, so it needs nothing but the interpreter inside the
sandbox; it imports only the standard library and never returns."""

import os
import select
import signal
import sys


def _exec(argv: list[str], lifeline: int) -> None:
    os.close(lifeline)  # the plugin never sees the lifeline
    # What Python changed at start-up goes back to the defaults a program expects (as
    # ``subprocess`` restores them): a plugin past its file-size limit dies of SIGXFSZ.
    for number in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(number, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        # The format ``Sandbox.exec_failure`` recognises.
        os.write(2, f"sandbox: failed to execute {argv[0]}: {exc.strerror}\n".encode(errors="replace"))
    os._exit(127)


def _end_like(status: int) -> None:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
        os._exit(128 + number)  # only if the signal did not end this process after all
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 255)


def main(args: list[str]) -> None:
    lifeline, scope, argv = int(args[0]), int(args[1]), args[3:]
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the poll below through the wake-up fd
    child = os.fork()
    if child == 0:
        os.close(wake_read)
        os.close(wake_write)
        _exec(argv, lifeline)
    for fd in (0, 1):
        os.close(fd)  # the child's output pipes end when the child's copies do
    poller = select.poll()
    poller.register(lifeline, select.POLLIN | select.POLLHUP)
    poller.register(wake_read, select.POLLIN)
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid == child:
            _end_like(status)
        for fd, _ in poller.poll():
            if fd == lifeline:
                os.kill(scope, signal.SIGKILL)  # the service is gone: so is its run
                os._exit(137)
            os.read(wake_read, 512)


if __name__ == "__main__":
    main(sys.argv[1:])
