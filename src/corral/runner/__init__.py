"""The runner side of the fleet: what runs on a runner host, talking to the control plane."""
