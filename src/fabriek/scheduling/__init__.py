"""The admission engine: a pure function from a snapshot of the factory to decisions
(engine.decide over the data of model.py), called by the controller each pass and by the
simulator over a virtual clock."""
