#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: ferry developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: ferry_channel
short_description: Make a VM's automatic update tool follow a channel of a ferry repository
description:
  - Runs C(ferry channel) on the managed host, which must have the C(ferry) package installed
    (the role M(ferry.fleet.enroll) installs it).
  - With O(state=enabled), trusts the repository's key after checking its full fingerprint, adds the
    repository, and turns unattended-upgrades (apt hosts) or dnf-automatic (dnf hosts) on for it,
    inside an optional maintenance window; then pins, unpins or rolls back the agent as asked.
  - With O(state=disabled), removes exactly what ferry wrote, and refuses to delete a file somebody changed.
  - Check mode asks ferry itself what it would change (C(--dry-run --json)); nothing is written.
  - Diff mode shows every file (and the rpm key, the dnf version lock and the installed version) before and after.
  - The agent's own package and ferry's package come from the same repository; the updater follows
    the channel for both (see docs/FLEET.md).
version_added: 1.0.0
author:
  - ferry developers (@ferry)
options:
  state:
    description:
      - V(enabled) follows O(channel); V(disabled) removes what ferry wrote.
    type: str
    choices: [enabled, disabled]
    default: enabled
  repo:
    description:
      - The repository made by C(ferry publish), as a URL (C(file:///srv/repo) or C(https://...));
        the directory holding C(apt/) and C(rpm/).
      - Needed, with O(key) and O(fingerprint), to enrol a host; omitted, a host that follows a channel
        keeps it (to pin, unpin or roll back only).
    type: str
  key:
    description:
      - Path on the managed host of the repository's public key (armored). Given with O(repo).
    type: path
  fingerprint:
    description:
      - The key's full fingerprint, obtained out of band; a key with another fingerprint is refused.
        Given with O(repo).
    type: str
  channel:
    description:
      - The channel to follow; it must exist in the repository.
    type: str
    default: stable
  window:
    description:
      - Maintenance window of the automatic upgrade, C([DAYS] HH:MM-HH:MM) in the host's local time,
        for example C(Mon..Fri 02:00-04:00). Omitted, the updater's own schedule applies (and a window
        set earlier is removed).
    type: str
  pin:
    description:
      - Keep the agent at this version (upstream C(1.2.0) or full C(1.2.0-1)); on apt hosts the next
        automatic run also goes back to it. An empty string removes the pin; omitted, the pin is left as it is.
    type: str
  rollback_to:
    description:
      - Install this version now through apt or dnf, so the upgrade hooks carry the state down, then pin it.
        Nothing happens when it is installed and pinned already.
    type: str
extends_documentation_fragment:
  - ferry.fleet.ferry
attributes:
  check_mode:
    support: full
    description: ferry itself says what it would change (C(--dry-run --json)); nothing is written.
  diff_mode:
    support: full
    description: Every file, the rpm key, the dnf version lock and the installed version, before and after.
notes:
  - Failures carry ferry's own message and its exit status in RV(rc) (1 failed, 2 usage, 3 refused before
    anything changed, 4 partly done).
seealso:
  - module: ferry.fleet.ferry_info
'''

EXAMPLES = r'''
- name: Follow the stable channel, upgrading on weekday nights
  ferry.fleet.ferry_channel:
    repo: https://repo.example.org/ferry
    key: /etc/ferry/signing-key.asc
    fingerprint: 0123456789ABCDEF0123456789ABCDEF01234567
    channel: stable
    window: Mon..Fri 02:00-04:00

- name: Hold the agent at 1.0.0 on a host that follows a channel
  ferry.fleet.ferry_channel:
    pin: 1.0.0

- name: Stop following the channel
  ferry.fleet.ferry_channel:
    state: disabled
'''

RETURN = r'''
installed_version:
  description: The agent's installed version, or null.
  returned: always
  type: str
  sample: 1.1.0-1
candidate_version:
  description: The newest version the channel offers, or null.
  returned: always
  type: str
  sample: 1.2.0-1
channel:
  description: The channel followed, or null when disabled.
  returned: always
  type: str
  sample: stable
pinned:
  description: The pinned version, or null.
  returned: always
  type: str
  sample: 1.0.0-1
window:
  description: The maintenance window, or null.
  returned: always
  type: str
  sample: Mon..Fri 02:00-04:00
why_not_updated:
  description: Why the installed version is not the candidate (the updater's last run, a pin, a refusal by a busy agent).
  returned: always
  type: list
  elements: str
enabled:
  description: Whether the host follows a channel.
  returned: always
  type: bool
changes:
  description: Each change ferry made (or, in check mode, would make), with path, action, before and after.
  returned: always
  type: list
  elements: dict
message:
  description: ferry's report, in words.
  returned: always
  type: str
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
            state=dict(type='str', default='enabled', choices=['enabled', 'disabled']),
            repo=dict(type='str'),
            key=dict(type='path', no_log=False),
            fingerprint=dict(type='str'),
            channel=dict(type='str', default='stable'),
            window=dict(type='str'),
            pin=dict(type='str'),
            rollback_to=dict(type='str'),
            package=dict(type='str', default='roboconf-agent'),
            family=dict(type='str', choices=['apt', 'dnf']),
            ferry=dict(type='str', default='ferry'),
        ),
        required_together=[('repo', 'key', 'fingerprint')],
        mutually_exclusive=[('pin', 'rollback_to')],
        supports_check_mode=True,
    )
    p = module.params
    base = ['channel', '--json'] + common_args(p)
    dry_run = ['--dry-run'] if module.check_mode else []
    before = run_ferry(module, base + ['status'])
    changes = []
    messages = []

    def step(args):
        report = run_ferry(module, base + args + dry_run)
        changes.extend(report['changes'])
        messages.append(report['message'].strip())

    if p['state'] == 'disabled':
        step(['disable'])
    else:
        if p['repo']:
            enable = ['enable', '--repo', p['repo'], '--key', p['key'],
                      '--fingerprint', p['fingerprint'], '--channel', p['channel']]
            if p['window']:
                enable += ['--window', p['window']]
            step(enable)
        elif not before['enabled']:
            module.fail_json(msg='%s does not follow a channel yet: give repo, key and fingerprint' % p['package'])
        wanted = p['pin'] if p['pin'] is not None else p['rollback_to']
        if module.check_mode and not before['enabled'] and wanted:
            # ferry cannot resolve a version in a repository it was not told
            # about yet: a pin on a host enrolled by this very task is a change.
            changes.append({'path': 'pin', 'action': 'pin', 'before': '', 'after': wanted})
        elif p['rollback_to']:
            step(['rollback', '--to', p['rollback_to']])
        elif p['pin']:
            step(['pin', p['pin']])
        elif p['pin'] == '' and before['pinned']:
            step(['unpin'])

    # Nothing changed (or a check): the status read before still holds.
    after = before if module.check_mode or not changes else run_ferry(module, base + ['status'])
    result = dict(
        changed=bool(changes),
        changes=changes,
        message='\n'.join(m for m in messages if m),
        enabled=after['enabled'],
        installed_version=after['installed'],
        candidate_version=after['newest_available'],
        channel=after['channel'],
        pinned=after['pinned'],
        window=after.get('window'),
        why_not_updated=after['not_updated_because'],
    )
    if module.check_mode:
        # What the host would say after the run.
        enabled = p['state'] == 'enabled'
        result['enabled'] = enabled
        if not enabled:
            result.update(channel=None, window=None, pinned=None)
        elif p['repo']:
            result.update(channel=p['channel'], window=p['window'])
    if module._diff:
        result['diff'] = diffs(changes)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
