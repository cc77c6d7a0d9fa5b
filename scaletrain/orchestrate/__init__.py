"""Orchestration around a run, never inside it: Ray Train (`run_with_ray`) and Ray Jobs (`launch_main`)."""
