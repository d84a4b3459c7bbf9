"""The fair queue (DRR over members) and the scheduler that feeds the worker."""

from .fair import FairQueue, QueueEntry
from .scheduler import JobInfo, QuietListener, Scheduler, SchedulerListener
from .workers import OneWorker, WorkerInfo, WorkerLike

__all__ = [
    "FairQueue",
    "JobInfo",
    "OneWorker",
    "QueueEntry",
    "QuietListener",
    "Scheduler",
    "SchedulerListener",
    "WorkerInfo",
    "WorkerLike",
]
