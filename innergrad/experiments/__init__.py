"""Paper reproductions (Hamiltonian Neural Networks) and the force-field experiment."""
