"""The fair queue (DRR over members) and the scheduler that feeds the worker."""

from .fair import FairQueue, QueueEntry
from .scheduler import JobInfo, QuietListener, Scheduler, SchedulerListener, WorkerLike

__all__ = [
    "FairQueue",
    "JobInfo",
    "QueueEntry",
    "QuietListener",
    "Scheduler",
    "SchedulerListener",
    "WorkerLike",
]
