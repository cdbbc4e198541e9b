"""Transport-agnostic coordinator logic: records in the store, the leader's fleet view and its control loops."""
