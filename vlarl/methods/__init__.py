"""Methods built on the trainer and the SFT loop: SFT, distillation, RPD, iRe-VLA, RLDG, and the quickstart pipeline."""
