/**
 * lab-jupyterlab: the lab platform inside JupyterLab.
 *
 * - a left sidebar (`LabSidebar`) with the lab's pipeline runs, models, experiments and
 *   monitoring, read from the server extension (`plugins.jupyterlab_ext`, `lab/api/...`);
 * - the command `lab:run-stage` (palette, and a button in every notebook's toolbar) that
 *   runs the pipeline stage whose notebook is the current one and shows its progress.
 */
import { ILabShell, ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, ToolbarButton } from '@jupyterlab/apputils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { DocumentRegistry } from '@jupyterlab/docregistry';
import { INotebookModel, INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';
import { DisposableDelegate, IDisposable } from '@lumino/disposable';

import { LabSidebar } from './sidebar';

const RUN_STAGE = 'lab:run-stage';
const REFRESH = 'lab:refresh';

/** A flask: the sidebar's tab icon. */
const labIcon = new LabIcon({
  name: 'lab-jupyterlab:flask',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">' +
    '<path class="jp-icon3" fill="#616161" d="M9 2h6v2h-1v5.3l5.6 9.4A2 2 0 0 1 17.9 22H6.1a2 2 0 0 1-1.7-3.3L10 9.3V4H9V2zm3 ' +
    '9.2L8.4 17h7.2L12 11.2z"/></svg>'
});

/** Adds the "lab stage" button to every notebook's toolbar; it runs `lab:run-stage` for that notebook. */
class StageButton implements DocumentRegistry.IWidgetExtension<NotebookPanel, INotebookModel> {
  constructor(private readonly app: JupyterFrontEnd) {}

  createNew(panel: NotebookPanel): IDisposable {
    const button = new ToolbarButton({
      className: 'lab-run-stage-button',
      label: 'lab stage',
      tooltip: "Run this notebook's lab pipeline stage (lab run <stage>) and show its progress",
      onClick: () => void this.app.commands.execute(RUN_STAGE, { path: panel.context.path })
    });
    panel.toolbar.insertItem(10, 'labRunStage', button);
    return new DisposableDelegate(() => button.dispose());
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'lab-jupyterlab:plugin',
  description: 'The lab platform: runs, models, experiments and monitoring in a sidebar; run a notebook as its stage.',
  autoStart: true,
  requires: [ILabShell],
  optional: [ICommandPalette, IDocumentManager, INotebookTracker, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    shell: ILabShell,
    palette: ICommandPalette | null,
    docManager: IDocumentManager | null,
    notebooks: INotebookTracker | null,
    restorer: ILayoutRestorer | null
  ) => {
    const sidebar = new LabSidebar(docManager);
    sidebar.title.icon = labIcon;
    shell.add(sidebar, 'left', { rank: 600 });
    if (restorer) {
      restorer.add(sidebar, sidebar.id);
    }

    const notebookPath = (args: Record<string, unknown>): string | null => {
      if (typeof args.path === 'string' && args.path) {
        return args.path;
      }
      return notebooks?.currentWidget?.context.path ?? null;
    };

    app.commands.addCommand(RUN_STAGE, {
      label: 'Run lab stage of this notebook',
      caption: "Run the pipeline stage whose notebook is the current one (lab run <stage>) and show its progress",
      icon: labIcon,
      isEnabled: args => notebookPath(args) !== null,
      execute: async args => {
        const path = notebookPath(args);
        if (!path) {
          return;
        }
        // The stage runs the file on disk: save unsaved edits first.
        const panel = notebooks?.find(p => p.context.path === path);
        if (panel && panel.context.model.dirty) {
          await panel.context.save();
        }
        shell.activateById(sidebar.id);
        await sidebar.runStage(path);
      }
    });
    app.commands.addCommand(REFRESH, {
      label: 'Refresh the lab sidebar',
      execute: () => sidebar.refresh()
    });
    if (palette) {
      palette.addItem({ command: RUN_STAGE, category: 'lab' });
      palette.addItem({ command: REFRESH, category: 'lab' });
    }
    app.docRegistry.addWidgetExtension('Notebook', new StageButton(app));
  }
};

export default plugin;
