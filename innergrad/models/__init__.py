"""Models whose forward pass contains a gradient: GradRNN, HamiltonianNet, ConservativeField, and integrators."""
