"""Build, reset and close one PushCube-v1 env three times in one process, with or without an
empty CPU render system kept alive first (docs/experiments/2026-12-07-env-worker-start.md).

    python docs/experiments/code/renderer_keepalive.py none
    python docs/experiments/code/renderer_keepalive.py keep
"""

import resource
import sys
import time

if __name__ == "__main__":
    import gymnasium as gym
    import mani_skill.envs  # noqa: F401  (registers the tasks)
    import sapien

    kept = sapien.render.RenderSystem(sapien.Device("cpu")) if sys.argv[1] == "keep" else None
    for i in range(3):
        t0 = time.perf_counter()
        env = gym.make("PushCube-v1", obs_mode="rgb", num_envs=1, sim_backend="physx_cpu",
                       render_backend="sapien_cpu", sensor_configs={"width": 32, "height": 32})
        env.reset(seed=0)
        env.close()
        del env
        print(sys.argv[1], i, f"{time.perf_counter() - t0:.2f} s",
              f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB", flush=True)
