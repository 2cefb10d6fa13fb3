"""Pure math and the step machinery: CLID, losses, the virtual step and its hypergradient, differentiable optimizer steps, loss scaling, replicas."""
