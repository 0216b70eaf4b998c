"""Crash tests: real ``eidetica serve`` processes on real files, killed with SIGKILL
at random moments while they commit, sync and pull, then restarted and checked."""
