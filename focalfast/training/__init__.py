"""The pieces of ``focalfast train`` (the command line is ``focalfast/train.py``).

    config.py                    TrainConfig, its checks, what --resume keeps
    run.py                       train(): TrainingRun's named steps and the epoch loop
    processes.py                 one process or several under torchrun (DistributedDataParallel)
    faults.py                    non-finite steps, SIGINT / SIGTERM
    schedule.py                  warm-up + cosine learning rate
    activation_checkpointing.py  --checkpointing modes
    throughput.py                the two img/s measurements and peak memory
    run_directory.py             the output directory, its guard and files
"""
