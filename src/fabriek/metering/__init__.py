"""Energy metering: what a job's GPUs, CPUs and memory used, measured where the hardware can say,
estimated (and marked so, with the method) where it cannot.

`readers.py` holds the readers (NVML energy counters or power samples, RAPL, rated-power
estimates) behind one small interface; `meter.py` combines them for one job and keeps the
samples over its life, so energy can be placed in the hour it was used. The local backend's job
supervisor runs a `JobMeter` next to the job.
"""
