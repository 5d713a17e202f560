#!/usr/bin/env python
"""Train and evaluate models from LazyConfig files (detectron2-style driver).

The command is :func:`brainseg.engine.launch.launch_main`; ``--help`` describes it.
"""
from brainseg.engine.launch import launch_main

if __name__ == "__main__":
    launch_main()
