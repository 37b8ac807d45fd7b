"""The ``ocs.plugins`` entry point: which agents ``ocs-agent-cli`` can launch."""
package_name = 'ocs_locking'
agents = {
    'LockRegistryAgent': {
        'module': 'ocs_locking.agents.lock_registry.agent',
        'entry_point': 'main',
    },
    'SimulatedDeviceAgent': {
        'module': 'ocs_locking.agents.simulated_device.agent',
        'entry_point': 'main',
    },
}
