#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: ferry developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: ferry_info
short_description: Read a VM's agent, its health, its snapshots and its channel
description:
  - Runs C(ferry info --json) on the managed host and returns what it says. Changes nothing.
  - Healthy means the agent's systemd unit is active and the agent answers C(status), asked as its own user,
    as the installed version.
version_added: 1.0.0
author:
  - ferry developers (@ferry)
options:
  channel:
    description:
      - Whether to read the channel's status too (RV(channel)), which asks the package manager and the
        repository. V(false) reads the agent alone (C(ferry info --no-channel)); RV(channel) is then null.
    type: bool
    default: true
extends_documentation_fragment:
  - ferry.fleet.ferry
attributes:
  check_mode:
    support: full
    description: The module only reads.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to show.
seealso:
  - module: ferry.fleet.ferry_channel
'''

EXAMPLES = r'''
- name: Read the agent
  ferry.fleet.ferry_info:
  register: agent

- name: Stop here unless it is healthy
  ansible.builtin.assert:
    that: agent.healthy
    fail_msg: "{{ agent.health }}"
'''

RETURN = r'''
installed:
  description: Whether a ferry package of that name is installed.
  returned: always
  type: bool
version:
  description: The installed version, as the agent reports it.
  returned: always
  type: str
  sample: 1.1.0
schema:
  description: The state schema the installed version writes.
  returned: always
  type: int
  sample: 3
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
channel:
  description: C(ferry channel status), or null when it could not be read (see RV(channel_error)) or was not asked for.
  returned: always
  type: dict
channel_error:
  description: Why the channel's status could not be read.
  returned: always
  type: str
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ferry.fleet.plugins.module_utils.ferry import common_args, run_ferry


def main():
    module = AnsibleModule(
        argument_spec=dict(
            package=dict(type='str', default='roboconf-agent'),
            family=dict(type='str', choices=['apt', 'dnf']),
            ferry=dict(type='str', default='ferry'),
            channel=dict(type='bool', default=True),
        ),
        supports_check_mode=True,
    )
    no_channel = [] if module.params['channel'] else ['--no-channel']
    info = run_ferry(module, ['info', '--json'] + no_channel + common_args(module.params))
    info.pop('package', None)
    module.exit_json(changed=False, **info)


if __name__ == '__main__':
    main()
