#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: ferry developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: ferry_migration
short_description: Begin, complete or cancel a Roboconf migration on a VM with ferry
description:
  - Runs C(ferry migration) on the managed host, which must have the C(ferry) package installed
    (the role M(ferry.fleet.enroll) installs it) and the agent installed by its ferry package.
  - With O(state=initialized), takes the agent's migration lock for O(app), holds the agent's package
    from unattended-upgrades (apt hosts) or dnf-automatic (dnf hosts), keeps the installed version's
    package file, and records it all in the journal C(/var/lib/ferry/<package>/migration.json).
    A migration with the same O(id) and O(app) already open is resumed (only the steps not done
    yet run); one fully initialized is left alone. Another migration open on the host is refused.
  - With O(state=performed), moves the agent to version O(to) under the lock, forward or backward,
    with O(strategy) for the instances it deployed (C(ferry migration perform --yes)). A perform to
    O(to) already finished is left alone; one that stopped midway is resumed where it stopped.
  - With O(state=completed) or O(state=cancelled), releases the lock, the hold the migration added
    and the kept package files, and closes the journal as done or cancelled; a cancel after a perform
    first moves the agent back to the version and the instance tree it had. A completed perform on a
    host that follows a channel pins the agent to the version performed, so its updater does not
    undo the migration (C(ferry channel unpin) follows the channel again). A host with no open
    migration is left alone.
  - The module reads C(ferry migration status --json) first and decides from it; it never parses
    ferry's error messages.
  - See docs/MIGRATION.md for the verbs, the journal and the exit statuses.
version_added: 1.0.0
author:
  - ferry developers (@ferry)
options:
  state:
    description:
      - V(initialized) begins the migration (or finishes a begun one); V(performed) moves the agent to
        O(to); V(completed) ends it as done; V(cancelled) ends it as cancelled (after a perform, back to
        where it began).
    type: str
    choices: [initialized, performed, completed, cancelled]
    default: initialized
  app:
    description:
      - The application being migrated; it must be the agent's own (C(application) in its C(agent.toml)),
        or the host refuses. Required with O(state=initialized).
    type: str
  id:
    description:
      - The migration's id, the same on every host of the application. Required with O(state=initialized),
        so that a second run finds the migration the first one began.
      - With O(state=completed) or O(state=cancelled), a host whose open migration has another id fails
        the task, and a host whose last migration of this id ended the other way fails it too;
        omitted, whatever migration is open is ended.
    type: str
  to:
    description:
      - The version to perform to (as the agent reports it, V(1.1.0), or the package's full version).
        Required with O(state=performed).
    type: str
  strategy:
    description:
      - V(keep) touches no instance; V(drastic) stops and undeploys every instance, then deploys and
        starts them again as they were; V(smart) applies the table O(components) names.
    type: str
    choices: [keep, drastic, smart]
    default: keep
  components:
    description:
      - The path, on the managed host, of the TOML table of V(smart) (see docs/MIGRATION.md).
    type: path
  by:
    description:
      - Who runs the migration, shown by the agent's refusals while it holds the lock.
    type: str
    default: ansible
  reason:
    description:
      - Why, shown by the agent's refusals while it holds the lock.
    type: str
    default: ''
extends_documentation_fragment:
  - ferry.fleet.ferry
attributes:
  check_mode:
    support: full
    description:
      - Reads C(ferry migration status --json) and predicts C(changed) (or the refusal); nothing is written.
      - RV(migration), RV(lock) and RV(held) are then what the host has now, not what it would have.
  diff_mode:
    support: none
    description: The journal in RV(migration) says what the migration did.
notes:
  - Failures carry ferry's own message and its exit status in RV(rc) (1 failed before anything changed,
    3 refused before anything changed, 4 partly done; the journal says what, and the same task run again
    finishes it, or O(state=cancelled) undoes it). The module's own refusals, read from the status before
    anything runs (another migration open, an id that does not match), carry RV(rc) 3 too.
  - The playbook C(ferry.fleet.migration) runs this module across a group and cancels the migration on
    every host where it began when any host fails to initialize.
seealso:
  - module: ferry.fleet.ferry_info
  - module: ferry.fleet.ferry_channel
'''

EXAMPLES = r'''
- name: Lock the agent and hold its package for the migration of shop
  ferry.fleet.ferry_migration:
    app: shop
    id: mig-7
    by: alice
    reason: new deployment model

- name: Move the agent to 1.1.0, redeploying every instance
  ferry.fleet.ferry_migration:
    state: performed
    id: mig-7
    to: 1.1.0
    strategy: drastic
- name: End it
  ferry.fleet.ferry_migration:
    state: completed
    id: mig-7

- name: Or undo it
  ferry.fleet.ferry_migration:
    state: cancelled
    id: mig-7
'''

RETURN = r'''
migration:
  description:
    - The migration's journal (see docs/MIGRATION.md); the open one, or, once ended, the one closed
      (C(state) V(done) or V(cancelled)); null when the host has had no migration.
  returned: always
  type: dict
  sample:
    id: mig-7
    app: shop
    by: alice
    state: open
    steps: [lock, hold, keep-package]
    hold_before: false
lock:
  description: The agent's migration lock as the agent reports it, or null when it holds none.
  returned: always
  type: dict
  sample:
    id: mig-7
    application: shop
    by: alice
held:
  description: Whether the agent's package is held from the automatic updater (null when ferry could not tell).
  returned: always
  type: bool
did:
  description: What ferry did, in words (empty when nothing was left to do, and in check mode).
  returned: always
  type: list
  elements: str
rc:
  description: ferry's exit status, on failure (3 for the module's own refusals).
  returned: failed
  type: int
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.ferry.fleet.plugins.module_utils.ferry import common_args, run_ferry

ENDED = {'completed': 'done', 'cancelled': 'cancelled'}
VERB = {'completed': 'complete', 'cancelled': 'cancel'}
INITIALIZE_STEPS = ('lock', 'hold', 'keep-package')


def performed(journal, to):
    """Whether the journal's perform to ``to`` (1.1.0 or 1.1.0-1) has finished."""
    runs = [r for r in journal['perform'] if r['purpose'] == 'perform']
    if not runs:
        return False
    run = runs[-1]
    same = run['to_version'] == to or to.rsplit('-', 1)[0] == run['to_version']
    return same and run['done'] == len(run['steps'])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type='str', default='initialized',
                       choices=['initialized', 'performed', 'completed', 'cancelled']),
            to=dict(type='str'),
            strategy=dict(type='str', default='keep', choices=['keep', 'drastic', 'smart']),
            components=dict(type='path'),
            app=dict(type='str'),
            id=dict(type='str'),
            by=dict(type='str', default='ansible'),
            reason=dict(type='str', default=''),
            package=dict(type='str', default='roboconf-agent'),
            family=dict(type='str', choices=['apt', 'dnf']),
            ferry=dict(type='str', default='ferry'),
        ),
        required_if=[('state', 'initialized', ('app', 'id')), ('state', 'performed', ('to',))],
        supports_check_mode=True,
    )
    p = module.params
    base = ['migration', '--json'] + common_args(p)
    before = run_ferry(module, base + ['status'])
    opened = before['open']
    last = before['last']
    journal = opened or last
    did = []
    changed = False

    if p['state'] == 'initialized':
        if opened and (opened['id'] != p['id'] or opened['app'] != p['app']):
            module.fail_json(
                msg='another migration is open on this host: %s of application %s, begun by %s; '
                    'complete or cancel it first' % (opened['id'], opened['app'], opened['by']),
                migration=opened, lock=before['agent_lock'], held=before['held'], rc=3)
        done = opened is not None and all(s in opened['steps'] for s in INITIALIZE_STEPS)
        if not done:
            changed = True
            if not module.check_mode:
                args = ['initialize', '--app', p['app'], '--id', p['id'], '--by', p['by'],
                        '--reason', p['reason']]
                report = run_ferry(module, base + args)
                journal = report['journal']
                did = report['did']
    elif p['state'] == 'performed':
        if opened is None or (p['id'] and opened['id'] != p['id']):
            module.fail_json(
                msg='no migration %sis open on this host: initialize it first'
                    % ('%s ' % p['id'] if p['id'] else ''),
                migration=journal, lock=before['agent_lock'], held=before['held'], rc=3)
        if not performed(opened, p['to']):
            changed = True
            if not module.check_mode:
                args = ['perform', '--to', p['to'], '--strategy', p['strategy'], '--yes']
                if p['components']:
                    args += ['--components', p['components']]
                report = run_ferry(module, base + args)
                journal = report['journal']
                did = report['did']
    else:
        wanted = ENDED[p['state']]
        if opened is None:
            if p['id'] and last and last['id'] == p['id'] and last['state'] != wanted:
                module.fail_json(
                    msg='the migration %s on this host ended %s, not %s' % (p['id'], last['state'], wanted),
                    migration=last, lock=before['agent_lock'], held=before['held'], rc=3)
        elif p['id'] and opened['id'] != p['id']:
            module.fail_json(
                msg='the migration open on this host is %s (application %s), not %s'
                    % (opened['id'], opened['app'], p['id']),
                migration=opened, lock=before['agent_lock'], held=before['held'], rc=3)
        else:
            changed = True
            if not module.check_mode:
                report = run_ferry(module, base + [VERB[p['state']]])
                journal = report['journal']
                did = report['did']

    after = before if module.check_mode or not changed else run_ferry(module, base + ['status'])
    module.exit_json(
        changed=changed,
        migration=journal,
        lock=after['agent_lock'],
        held=after['held'],
        did=did,
    )


if __name__ == '__main__':
    main()
