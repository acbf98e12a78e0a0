#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: ferry developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: ferry_install
short_description: Move a VM's agent to one version now, and say whether it is healthy there
description:
  - Runs C(ferry channel install VERSION) on the managed host, then C(ferry info --no-channel), in one task
    that acts and reads; the playbook C(ferry.fleet.rollout) runs it on each host of a batch.
  - The repositories' metadata is read again, the version is installed through apt or dnf (up or down),
    so the agent's upgrade hooks carry its state, and a host pinned with M(ferry.fleet.ferry_channel)
    is pinned to the new version, so its updater agrees afterwards.
  - A host whose updater follows a channel without a pin is refused before anything changes (RV(rc) 3),
    since its unattended-upgrades or dnf-automatic would race the install. A host that follows no channel
    just gets the version.
  - The result carries what M(ferry.fleet.ferry_info) returns after the install (without the channel's
    status), with the version, RV(healthy) and RV(health). The module does not fail an unhealthy agent;
    the caller decides (the rollout stops).
version_added: 1.0.0
author:
  - ferry developers (@ferry)
options:
  version:
    description:
      - The version to install, upstream (C(1.2.0)) or full (C(1.2.0-1)).
    type: str
    required: true
extends_documentation_fragment:
  - ferry.fleet.ferry
attributes:
  check_mode:
    support: full
    description:
      - ferry itself says what it would install and pin (C(--dry-run --json)); nothing changes, not even
        the package manager's cached metadata, so a version published since it was last read is not found.
      - The health returned is then the agent's as it is now.
  diff_mode:
    support: full
    description: The installed version and each file or lock of the pin, before and after.
notes:
  - Failures carry ferry's own message and its exit status in RV(rc) (1 failed, 3 refused before anything
    changed, 4 partly done).
seealso:
  - module: ferry.fleet.ferry_channel
  - module: ferry.fleet.ferry_info
'''

EXAMPLES = r'''
- name: Move the agent to 1.2.0
  ferry.fleet.ferry_install:
    version: 1.2.0
  register: agent

- name: Stop here unless it is healthy at 1.2.0
  ansible.builtin.assert:
    that:
      - agent.healthy
      - agent.version == '1.2.0'
    fail_msg: "{{ agent.health }}"
'''

RETURN = r'''
changes:
  description: Each change ferry made (or, in check mode, would make), with path, action, before and after.
  returned: always
  type: list
  elements: dict
message:
  description: ferry's report, in words.
  returned: always
  type: str
installed:
  description: Whether a ferry package of that name is installed, after the install.
  returned: always
  type: bool
version:
  description: The installed version, as the agent reports it, after the install.
  returned: always
  type: str
  sample: 1.2.0
schema:
  description: The state schema the installed version writes.
  returned: always
  type: int
healthy:
  description: The unit is active and the agent answers as the installed version.
  returned: always
  type: bool
health:
  description: Why the agent is, or is not, healthy.
  returned: always
  type: str
active_state:
  description: systemd's ActiveState of the agent's unit.
  returned: always
  type: str
agent:
  description: The agent's own C(ctl status --json), when it answered.
  returned: always
  type: dict
upgrade_record:
  description: An upgrade the hook has not finished, or one that failed, or null.
  returned: always
  type: dict
last_upgrade:
  description: The last line of the hook's upgrade log.
  returned: always
  type: str
snapshots:
  description: The snapshots of the state, oldest first.
  returned: always
  type: list
  elements: str
rc:
  description: ferry's exit status, on failure.
  returned: failed
  type: int
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ferry.fleet.plugins.module_utils.ferry import common_args, diffs, run_ferry


def main():
    module = AnsibleModule(
        argument_spec=dict(
            version=dict(type='str', required=True),
            package=dict(type='str', default='roboconf-agent'),
            family=dict(type='str', choices=['apt', 'dnf']),
            ferry=dict(type='str', default='ferry'),
        ),
        supports_check_mode=True,
    )
    p = module.params
    dry_run = ['--dry-run'] if module.check_mode else []
    report = run_ferry(module, ['channel', '--json'] + common_args(p) + ['install', p['version']] + dry_run)
    info = run_ferry(module, ['info', '--json', '--no-channel'] + common_args(p))
    for key in ('package', 'channel', 'channel_error'):
        info.pop(key, None)
    result = dict(changed=report['changed'], changes=report['changes'], message=report['message'].strip(), **info)
    if module._diff:
        result['diff'] = diffs(report['changes'])
    module.exit_json(**result)


if __name__ == '__main__':
    main()
