"""Run plumbing: run directories and their locks, start-up checks, preemption, tracking, machine facts."""
