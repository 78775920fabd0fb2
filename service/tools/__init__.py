"""The offline commands around the service: backtest, produce, inspect, dev, and the
embedded broker and Redis they (and the tests and the demo) start. None of this runs
inside `tickprop worker`; the runtime is the rest of `service/`."""
